// The "calc" window: serves Calc.add until the supervisor closes the bus.
#include <cstdio>

#include "calc.shmbus.h"

int main() {
  auto win = shmbus::Window::fromSpawn();  // started by Supervisor::spawn; its role is "calc"
  if (!win) {
    std::fprintf(stderr, "calc: %s\n", win.error().toString().c_str());
    return 1;
  }
  shmbus::Window& w = **win;
  // Keep the Registration: destroying it unregisters the handler.
  auto add = quickstart::CalcHandlers::handleAdd(w, [](auto params, auto results) {
    results.setSum(params.getA() + params.getB());
  });
  w.run();  // dispatches until the bus closes
  return 0;
}
