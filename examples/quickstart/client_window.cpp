// The "client" window: calls Calc.add in the calc window and reports to the main process.
#include <cstdio>
#include <string>

#include "calc.shmbus.h"

int main() {
  auto win = shmbus::Window::fromSpawn();
  if (!win) {
    std::fprintf(stderr, "client: %s\n", win.error().toString().c_str());
    return 1;
  }
  shmbus::Window& w = **win;
  // Calc is $target("calc"): the supervisor routes the call to the calc window.
  auto sum = quickstart::CalcClient(w).add([](auto p) {
    p.setA(1);
    p.setB(2);
  }).get();
  const std::string text = sum ? "1 + 2 = " + std::to_string(sum->reader().getSum()) : sum.error().toString();
  // Log has no $target: a one-way message to the main process.
  if (auto sent = quickstart::LogClient(w).line([&](auto p) { p.setText(text); }); !sent) {
    std::fprintf(stderr, "client: %s\n", sent.error().toString().c_str());
    return 1;
  }
  w.run();  // until the bus closes
  return 0;
}
