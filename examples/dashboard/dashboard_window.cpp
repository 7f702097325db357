// The dashboard demo's window processes. One program, four roles (given by the supervisor that
// spawned it): "dashboard" answers queries over a CSV data set, "settings" reports window state,
// "editor" updates charts, and "main" (the application's main window) runs the scenario and
// prints the transcript.
#include <signal.h>

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include "dashboard.capnp.h"
#include "dashboard.shmbus.h"
#include "demo_common.hpp"

using namespace shmbus;
using namespace std::chrono_literals;

namespace {

struct SaleRow {
  std::string region, product;
  unsigned year = 0, month = 0, units = 0;
  double revenue = 0;
};

std::vector<SaleRow> loadCsv(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open data set " + path);
  std::vector<SaleRow> rows;
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::stringstream ss(line);
    SaleRow r;
    std::string f;
    std::getline(ss, r.region, ',');
    std::getline(ss, r.product, ',');
    std::getline(ss, f, ',');
    r.year = static_cast<unsigned>(std::stoul(f));
    std::getline(ss, f, ',');
    r.month = static_cast<unsigned>(std::stoul(f));
    std::getline(ss, f, ',');
    r.units = static_cast<unsigned>(std::stoul(f));
    std::getline(ss, f, ',');
    r.revenue = std::stod(f);
    rows.push_back(std::move(r));
  }
  return rows;
}

bool matches(const SaleRow& r, demo::Filter::Reader f) {
  const std::string k = f.getKey(), v = f.getValue();
  if (k == "region") return r.region == v;
  if (k == "product") return r.product == v;
  if (k == "year") return std::to_string(r.year) == v;
  if (k == "month") return std::to_string(r.month) == v;
  throw std::invalid_argument("unknown filter column '" + k + "'");
}

int runDashboard(Window& w) {
  const auto rows = loadCsv(demo::exeDir() + "/sales.csv");
  auto data = demo::DashboardHandlers::handleGetDashboardData(
      w, [&](auto params, auto results, const CallContext& ctx) {
        if (ctx.sourceRole != "main") {
          throw std::runtime_error(
              fmt::format("Unauthorized: only the main window can request dashboard data (caller role '{}')",
                          ctx.sourceRole));
        }
        std::vector<const SaleRow*> hits;
        double revenue = 0;
        for (const auto& r : rows) {
          bool ok = true;
          for (auto f : params.getFilters()) ok = ok && matches(r, f);
          if (ok) {
            hits.push_back(&r);
            revenue += r.revenue;
          }
        }
        const auto n = std::min<std::size_t>(hits.size(), params.getLimit() == 0 ? hits.size() : params.getLimit());
        auto out = results.initRows(static_cast<unsigned>(n));
        for (std::size_t i = 0; i < n; ++i) {
          auto o = out[static_cast<unsigned>(i)];
          o.setRegion(hits[i]->region);
          o.setProduct(hits[i]->product);
          o.setYear(static_cast<std::uint16_t>(hits[i]->year));
          o.setMonth(static_cast<std::uint8_t>(hits[i]->month));
          o.setUnits(hits[i]->units);
          o.setRevenue(hits[i]->revenue);
        }
        results.setTimestamp(demo::nowMs());
        results.setTotal(static_cast<std::uint32_t>(hits.size()));
        results.setRevenue(revenue);
      });
  auto slow = demo::DashboardHandlers::handleSlowReport(w, [&](auto, auto results, const CallContext& ctx) {
    // A heavy aggregation: recomputes the whole data set until done (never, here) or the
    // caller's deadline passes / the caller cancels.
    std::uint64_t passes = 0;
    while (!ctx.cancelled()) {
      double acc = 0;
      for (const auto& r : rows) acc += std::sqrt(r.revenue);
      passes += acc > 0 ? 1 : 0;
    }
    results.setTotal(static_cast<std::uint32_t>(passes));
    throw std::runtime_error(fmt::format("slowReport abandoned after {} passes: the caller gave up", passes));
  });
  w.run();
  return 0;
}

int runSettings(Window& w) {
  auto state = demo::SettingsHandlers::handleGetWindowState(w, [](auto, auto results, const CallContext&) {
    results.setIsMaximized(false);
    auto b = results.initBounds();
    b.setX(120);
    b.setY(80);
    b.setWidth(1280);
    b.setHeight(800);
  });
  auto exp = demo::SettingsHandlers::handleExportSettings(w, [&](auto, auto results, const CallContext& ctx) {
    // Tell main we started; the demo's supervisor kills this window right then (TargetGone).
    (void)demo::EventsClient(w).exportStarted(Target::main(), [](auto p) { p.setPid(::getpid()); });
    while (!ctx.cancelled()) {
    }
    results.setPath("/tmp/settings.json");
  });
  w.run();
  return 0;
}

int runEditor(Window& w) {
  std::map<std::string, std::string> charts{{"sales-chart-1", "line"}, {"revenue-chart", "pie"}};
  auto upd = demo::EditorHandlers::handleUpdateChart(w, [&](auto params, auto results, const CallContext&) {
    auto it = charts.find(params.getChartId());
    if (it == charts.end()) throw std::out_of_range(fmt::format("Chart '{}' not found", params.getChartId().cStr()));
    it->second = params.getConfig().getType();
    results.setSuccess(true);
    results.setUpdatedAt(demo::nowMs());
  });
  // A typed coroutine handler that itself calls another window: while it awaits the dashboard,
  // the editor's dispatch thread serves other calls (no blocking get(), no re-entrant dispatch).
  using Refresh = demo::EditorMethods::RefreshFromDashboard;
  auto refresh = demo::EditorHandlers::handleRefreshFromDashboardCo(
      w, [&w](TypedRequest<Refresh> req) -> Task<TypedReply<Refresh>> {
        auto r = co_await demo::DashboardClient(w).getDashboardData(
            [&](auto p) { p.setQuery(req.params().getQuery()); });
        TypedReply<Refresh> reply;
        reply.results().setOutcome(r ? std::string("ok") : r.error().toString());
        co_return reply;
      });
  w.run();
  return 0;
}

/// The main window: runs the seed scenario against the other windows and prints the transcript.
int runMain(Window& w) {
  int failures = 0;
  auto step = [&](const char* title, auto&& call, auto&& expect) {
    const auto t0 = std::chrono::steady_clock::now();
    auto r = call();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::string detail;
    const bool ok = expect(r, detail);
    if (!ok) ++failures;
    fmt::print("  {:<48} {:>9.3f} ms  {}  {}\n", title, ms, ok ? "as expected" : "UNEXPECTED", detail);
    std::fflush(stdout);
  };
  demo::DashboardClient dashboard(w);
  demo::SettingsClient settings(w);
  demo::EditorClient editor(w);
  fmt::print("[main window {}] scenario:\n", w.id());

  step("Dashboard.getDashboardData(sales, year=2024)",
       [&] {
         return dashboard.getDashboardData([](auto p) {
           p.setQuery("sales");
           p.setLimit(3);
           auto f = p.initFilters(1);
           f[0].setKey("year");
           f[0].setValue("2024");
         }).get();
       },
       [](auto& r, std::string& d) {
         if (!r) return d = r.error().toString(), false;
         auto v = r->reader();
         d = fmt::format("total={} revenue={:.2f} first={}/{}/{}-{:02}", v.getTotal(), v.getRevenue(),
                         v.getRows()[0].getRegion().cStr(), v.getRows()[0].getProduct().cStr(), v.getRows()[0].getYear(),
                         v.getRows()[0].getMonth());
         return v.getTotal() == 192 && v.getRows().size() == 3;
       });
  step("Dashboard.getDashboardData(region=west, product=gizmo)",
       [&] {
         return dashboard.getDashboardData([](auto p) {
           p.setQuery("sales");
           auto f = p.initFilters(2);
           f[0].setKey("region");
           f[0].setValue("west");
           f[1].setKey("product");
           f[1].setValue("gizmo");
         }).get();
       },
       [](auto& r, std::string& d) {
         if (!r) return d = r.error().toString(), false;
         d = fmt::format("total={} rows={}", r->reader().getTotal(), r->reader().getRows().size());
         return r->reader().getTotal() == 24;
       });
  step("Settings.getWindowState()", [&] { return settings.getWindowState([](auto) {}).get(); },
       [](auto& r, std::string& d) {
         if (!r) return d = r.error().toString(), false;
         auto b = r->reader().getBounds();
         d = fmt::format("maximized={} bounds={}x{}+{}+{}", r->reader().getIsMaximized(), b.getWidth(), b.getHeight(),
                         b.getX(), b.getY());
         return b.getWidth() == 1280;
       });
  step("Editor.updateChart(sales-chart-1)",
       [&] {
         return editor.updateChart([](auto p) {
           p.setChartId("sales-chart-1");
           auto c = p.initConfig();
           c.setType("bar");
           c.initColors(1).set(0, "#ff0000");
         }).get();
       },
       [](auto& r, std::string& d) {
         if (!r) return d = r.error().toString(), false;
         d = fmt::format("success={}", r->reader().getSuccess());
         return r->reader().getSuccess();
       });
  step("Editor.updateChart(no-such-chart) -> HandlerError",
       [&] {
         return editor.updateChart([](auto p) {
           p.setChartId("no-such-chart");
           p.initConfig().setType("bar");
         }).get();
       },
       [](auto& r, std::string& d) {
         d = r ? std::string("succeeded?") : r.error().toString();
         return !r && r.code() == ErrorCode::HandlerError && r.error().remoteMessage == "Chart 'no-such-chart' not found";
       });
  step("Editor.refreshFromDashboard -> editor is refused",
       [&] { return editor.refreshFromDashboard([](auto p) { p.setQuery("sales"); }).get(); },
       [](auto& r, std::string& d) {
         if (!r) return d = r.error().toString(), false;
         d = r->reader().getOutcome();
         return d.find("Unauthorized") != std::string::npos;
       });
  step("Dashboard.slowReport(timeout 100 ms) -> Timeout",
       [&] {
         CallOptions o;
         o.timeout = 100ms;
         return dashboard.slowReport([](auto p) { p.setQuery("all"); }, o).get();
       },
       [](auto& r, std::string& d) {
         d = r ? std::string("succeeded?") : r.error().toString();
         return !r && r.code() == ErrorCode::Timeout;
       });
  step("Dashboard.getDashboardData to role 'analytics' -> NoTarget",
       [&] { return dashboard.getDashboardData(Target("analytics"), [](auto p) { p.setQuery("sales"); }).get(); },
       [](auto& r, std::string& d) {
         d = r ? std::string("succeeded?") : r.error().toString();
         return !r && r.code() == ErrorCode::NoTarget;
       });
  step("Settings.exportSettings, window killed -> TargetGone",
       [&] { return settings.exportSettings([](auto) {}).get(); },
       [](auto& r, std::string& d) {
         d = r ? std::string("succeeded?") : r.error().toString();
         return !r && r.code() == ErrorCode::TargetGone;
       });
  step("Dashboard.getDashboardData x 200 (repeated queries: a direct route)",
       [&] {
         auto query = [&] { return dashboard.getDashboardData([](auto p) { p.setQuery("sales"); p.setLimit(1); }).get(); };
         auto last = query();
         for (int i = 1; i < 200 && last; ++i) last = query();
         return last;
       },
       [](auto& r, std::string& d) {
         if (!r) return d = r.error().toString(), false;
         d = fmt::format("total={} (the router's stats below count them as direct)", r->reader().getTotal());
         return r->reader().getTotal() == 384;
       });
  step("Dashboard.getDashboardData after all that",
       [&] { return dashboard.getDashboardData([](auto p) { p.setQuery("sales"); p.setLimit(1); }).get(); },
       [](auto& r, std::string& d) {
         if (!r) return d = r.error().toString(), false;
         d = fmt::format("total={}", r->reader().getTotal());
         return r->reader().getTotal() == 384;
       });
  (void)demo::EventsClient(w).scenarioDone(Target::main(), [&](auto p) {
    p.setOk(failures == 0);
    p.setFailures(static_cast<std::uint32_t>(failures));
  });
  w.run();  // until the supervisor closes the bus
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main() {
  auto win = Window::fromSpawn();
  if (!win) {
    fmt::print(stderr, "window: {}\n", win.error().toString());
    return 2;
  }
  Window& w = **win;
  const std::string role = w.role();
  if (role == "dashboard") return runDashboard(w);
  if (role == "settings") return runSettings(w);
  if (role == "editor") return runEditor(w);
  if (role == "main") return runMain(w);
  fmt::print(stderr, "window: unknown role '{}'\n", role);
  return 2;
}
