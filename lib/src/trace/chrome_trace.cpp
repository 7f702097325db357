// ChromeTrace (shmbus/inspect.hpp): trace events as a Chrome trace-event JSON document, the format
// of the Trace Event Format specification (Google, "Trace Event Format", the JSON Object Format
// with "X" complete events, "i" instants, "s"/"f" flow events and "M" metadata) that
// ui.perfetto.dev and chrome://tracing load. docs/architecture.md §14.
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "shmbus/inspect.hpp"
#include "trace/trace_event.hpp"

namespace shmbus {

namespace {

using detail::jsonString;

/// A slice of the timeline before it is given a thread: an event's caller or handler side.
struct Slice {
  std::size_t event = 0;   // index into the sorted events
  std::uint32_t window = 0;
  bool handler = false;    // the handler's side of a call (else the caller's)
  std::int64_t start = 0, end = 0;
  std::uint32_t thread = 1;  // assigned: 1 = "calls", 2 = "calls 2", ...
};

/// Perfetto and chrome://tracing require the complete events of one thread to nest. Greedy
/// assignment, in (start, longest first) order: a slice goes to the first thread whose open
/// slices (those not ended by its start) all contain it, else to a new thread.
void assignThreads(std::vector<Slice>& slices) {
  std::stable_sort(slices.begin(), slices.end(), [](const Slice& a, const Slice& b) {
    return a.start != b.start ? a.start < b.start : a.end > b.end;
  });
  std::unordered_map<std::uint32_t, std::vector<std::vector<std::int64_t>>> open;  // window → threads → ends
  for (Slice& s : slices) {
    auto& threads = open[s.window];
    std::size_t t = 0;
    for (; t < threads.size(); ++t) {
      auto& ends = threads[t];
      while (!ends.empty() && ends.back() <= s.start) ends.pop_back();
      if (ends.empty() || ends.back() >= s.end) break;
    }
    if (t == threads.size()) threads.emplace_back();
    threads[t].push_back(s.end);
    s.thread = static_cast<std::uint32_t>(t + 1);
  }
}

/// Track (process) id of a window in the document: its window id + 1 (the main process is 1).
std::uint32_t trackOf(std::uint32_t window) { return window + 1; }

/// Microseconds from `t0`, with the nanoseconds kept (the format's unit is µs).
std::string micros(std::int64_t ns, std::int64_t t0) {
  // Wraps around instead of overflowing (the times come from trace records: see durationMs).
  const auto d = static_cast<std::int64_t>(static_cast<std::uint64_t>(ns) - static_cast<std::uint64_t>(t0));
  return fmt::format("{}.{:03}", d / 1000, d % 1000);
}

/// Whether a call reached a handler whose side can be drawn: a window, or main's own handler.
bool hasHandlerSide(const TraceEvent& e) { return e.targetId != 0 || e.targetRole == "main"; }

/// `texts`: ChromeTrace::addText's arguments, by seq.
void appendArgs(std::string& out, const TraceEvent& e,
                const std::map<std::uint64_t, std::vector<std::pair<std::string, std::string>>>& texts) {
  out += "\"args\":{\"channel\":";
  jsonString(out, e.channel);
  out += ",\"from\":";
  jsonString(out, detail::endpointName(e.sourceRole, e.sourceId));
  out += ",\"to\":";
  jsonString(out, e.kind == TraceKind::Broadcast && e.targetId == 0
                      ? (e.targetRole.empty() ? std::string("all") : "role " + e.targetRole)
                      : detail::endpointName(e.targetRole, e.targetId));
  out += fmt::format(",\"status\":\"{}\",\"error\":", e.status == ErrorCode::Ok ? "Ok" : errorCodeName(e.status));
  jsonString(out, e.error);
  out += fmt::format(",\"seq\":{},\"requestId\":{},\"traceId\":{},\"requestBytes\":{},\"replyBytes\":{}", e.seq,
                     e.requestId, e.traceId, e.requestBytes, e.replyBytes);
  if (e.portId != 0) out += fmt::format(",\"port\":{}", e.portId);
  if (const auto it = texts.find(e.seq); it != texts.end()) {
    for (const auto& [name, text] : it->second) {
      out += ',';
      jsonString(out, name);
      out += ':';
      jsonString(out, text);
    }
  }
  out += '}';
}

}  // namespace

void ChromeTrace::add(const TraceEvent& e) {
  events_.push_back(e);
  // The bytes are not written into the document (the texts are): keep no copy of them.
  events_.back().request.reset();
  events_.back().reply.reset();
}

void ChromeTrace::addText(std::uint64_t seq, std::string name, std::string text) {
  texts_[seq].emplace_back(std::move(name), std::move(text));
}

std::map<std::string, std::uint64_t> ChromeTrace::countsByKind() const {
  std::map<std::string, std::uint64_t> counts;
  for (const TraceEvent& e : events_) ++counts[traceKindName(e.kind)];
  return counts;
}

std::string ChromeTrace::json() const {
  std::vector<TraceEvent> events = events_;
  std::stable_sort(events.begin(), events.end(), [](const TraceEvent& a, const TraceEvent& b) {
    return a.startNs != b.startNs ? a.startNs < b.startNs : a.seq < b.seq;
  });
  const std::int64_t t0 = events.empty() ? 0 : events.front().startNs;

  // Track names: the role each window id was seen with, and its pid from its window events.
  std::map<std::uint32_t, std::string> names{{0, "main"}};
  std::map<std::uint32_t, std::uint32_t> pids;
  auto seen = [&](std::uint32_t id, const std::string& role) {
    if (id != 0 && !role.empty()) names.try_emplace(id, detail::endpointName(role, id));
  };
  std::vector<Slice> slices;
  for (std::size_t i = 0; i < events.size(); ++i) {
    const TraceEvent& e = events[i];
    seen(e.sourceId, e.sourceRole);
    if (e.kind == TraceKind::WindowOpen && e.pid != 0) pids[e.sourceId] = e.pid;
    if (e.kind != TraceKind::Invoke) continue;
    slices.push_back({i, e.sourceId, false, e.startNs, std::max(e.startNs, e.endNs)});
    if (hasHandlerSide(e)) {
      seen(e.targetId, e.targetRole);
      slices.push_back({i, e.targetId, true, e.startNs, std::max(e.startNs, e.endNs)});
    }
  }
  assignThreads(slices);
  std::map<std::uint32_t, std::uint32_t> threads;  // window → threads used
  for (const Slice& s : slices) threads[s.window] = std::max(threads[s.window], s.thread);

  std::string out = fmt::format("{{\"displayTimeUnit\":\"ns\",\"otherData\":{{\"producer\":\"libshmbus\","
                                "\"events\":{},\"lostEvents\":{}}},\"traceEvents\":[",
                                events.size(), lost_);
  bool first = true;
  auto open = [&] {
    if (!first) out += ",\n";
    first = false;
  };
  for (const auto& [id, name] : names) {
    std::string label = name;
    if (auto p = pids.find(id); p != pids.end()) label += fmt::format(" (pid {})", p->second);
    open();
    out += fmt::format("{{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":{},\"tid\":1,\"args\":{{\"name\":", trackOf(id));
    jsonString(out, label);
    out += "}}";
    open();
    out += fmt::format("{{\"ph\":\"M\",\"name\":\"process_sort_index\",\"pid\":{},\"tid\":1,\"args\":{{\"sort_index\":{}}}}}",
                       trackOf(id), id);
    const std::uint32_t n = std::max<std::uint32_t>(1, threads[id]);
    for (std::uint32_t t = 1; t <= n; ++t) {
      open();
      out += fmt::format("{{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":\"{}\"}}}}",
                         trackOf(id), t, t == 1 ? std::string("calls") : fmt::format("calls {}", t));
    }
  }
  // Calls: a complete event per side, then the flow from the caller's side to the handler's.
  std::unordered_map<std::size_t, std::uint32_t> callerThread;  // event index → caller's thread
  for (const Slice& s : slices) {
    const TraceEvent& e = events[s.event];
    const bool failed = e.status != ErrorCode::Ok;
    std::string name = e.channel;
    if (failed) name += fmt::format(" [{}]", errorCodeName(e.status));
    open();
    out += fmt::format("{{\"ph\":\"X\",\"cat\":\"{}\",\"pid\":{},\"tid\":{},\"ts\":{},\"dur\":{},{}\"name\":",
                       s.handler ? "handle" : "invoke", trackOf(s.window), s.thread, micros(s.start, t0),
                       micros(s.end, s.start), failed ? "\"cname\":\"terrible\"," : "");
    jsonString(out, name);
    out += ',';
    appendArgs(out, e, texts_);
    out += '}';
    if (!s.handler) callerThread[s.event] = s.thread;
  }
  for (const Slice& s : slices) {
    if (!s.handler) continue;
    const TraceEvent& e = events[s.event];
    open();
    out += fmt::format("{{\"ph\":\"s\",\"cat\":\"call\",\"name\":\"call\",\"id\":{},\"pid\":{},\"tid\":{},\"ts\":{}}}",
                       e.seq, trackOf(e.sourceId), callerThread[s.event], micros(s.start, t0));
    open();
    out += fmt::format("{{\"ph\":\"f\",\"bp\":\"e\",\"cat\":\"call\",\"name\":\"call\",\"id\":{},\"pid\":{},\"tid\":{},"
                       "\"ts\":{}}}",
                       e.seq, trackOf(s.window), s.thread, micros(s.start, t0));
  }
  // Everything else is an instant on the sender's (or the window's own) track.
  for (const TraceEvent& e : events) {
    if (e.kind == TraceKind::Invoke) continue;
    std::string name = traceKindName(e.kind);
    if (!e.channel.empty()) name += " " + e.channel;
    if (e.status != ErrorCode::Ok) name += fmt::format(" [{}]", errorCodeName(e.status));
    open();
    out += fmt::format("{{\"ph\":\"i\",\"s\":\"t\",\"cat\":\"{}\",\"pid\":{},\"tid\":1,\"ts\":{},\"name\":",
                       traceKindName(e.kind), trackOf(e.sourceId), micros(e.startNs, t0));
    jsonString(out, name);
    out += ',';
    appendArgs(out, e, texts_);
    out += '}';
  }
  out += "]}\n";
  return out;
}

Result<void> ChromeTrace::write(const std::string& path) const {
  const std::string doc = json();
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) return makeError(ErrorCode::SystemError, fmt::format("{}: {}", path, std::strerror(errno)));
  const bool wrote = std::fwrite(doc.data(), 1, doc.size(), f) == doc.size();
  const int err = errno;
  if (std::fclose(f) != 0 || !wrote) {
    return makeError(ErrorCode::SystemError, fmt::format("{}: {}", path, std::strerror(wrote ? errno : err)));
  }
  return {};
}

}  // namespace shmbus
