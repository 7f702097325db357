# The contracts of the multi-window dashboard demo (the seed scenario of
# the Electron IPC seed's dashboard example: GetDashboardData, GetWindowState, UpdateChart).
@0xab3b3736328f8a26;

using Bus = import "/shmbus.capnp";
$import "/capnp/c++.capnp".namespace("demo");

struct Filter {
  key @0 :Text;     # a CSV column: region, product, year, month
  value @1 :Text;
}

struct Row {
  region @0 :Text;
  product @1 :Text;
  year @2 :UInt16;
  month @3 :UInt8;
  units @4 :UInt32;
  revenue @5 :Float64;
}

struct Bounds {
  x @0 :Int32;
  y @1 :Int32;
  width @2 :Int32;
  height @3 :Int32;
}

struct ChartConfig {
  type @0 :Text;
  colors @1 :List(Text);
}

interface Dashboard $Bus.target("dashboard") {
  getDashboardData @0 (query :Text, filters :List(Filter), limit :UInt32)
      -> (rows :List(Row), timestamp :Int64, total :UInt32, revenue :Float64) $Bus.timeoutMs(3000);
  # Rows of the sales data set matching every filter (first `limit` rows returned, `total` counted).
  # Only the role "main" may ask.

  slowReport @1 (query :Text) -> (total :UInt32);
  # A heavy aggregation that runs until it is done or the caller gives up (ctx.cancelled()).
}

interface Settings $Bus.target("settings") {
  getWindowState @0 () -> (isMaximized :Bool, bounds :Bounds) $Bus.timeoutMs(1000);
  exportSettings @1 () -> (path :Text);
  # Announces itself on the one-way "export-started" channel before it writes (the demo's
  # supervisor kills the settings window right then, to show TargetGone).
}

interface Editor $Bus.target("editor") {
  updateChart @0 (chartId :Text, config :ChartConfig) -> (success :Bool, updatedAt :Int64);
  refreshFromDashboard @1 (query :Text) -> (outcome :Text);
  # The editor itself calls Dashboard.getDashboardData (which refuses any role but "main").
}

interface Events {
  scenarioDone @0 (ok :Bool, failures :UInt32) $Bus.oneway;
  exportStarted @1 (pid :Int32) $Bus.oneway;
}
