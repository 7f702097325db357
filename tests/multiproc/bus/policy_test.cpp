// The policy model across real processes (issue 11, item 2; docs/architecture.md §15): every
// pattern checked on both sides (the sender may send or invoke, the receiver may receive or
// handle), each denial reported Denied to whoever made it and counted; what the policy allows
// still works. Also the default decision, admission, per-role caps and message limits, and a
// policy replaced while windows run.
#include <doctest/doctest.h>

#include <algorithm>

#include "bus_test.hpp"

using namespace shmbus;
using namespace shmbus::test;
using namespace std::chrono_literals;

namespace {

/// A channel rule letting `roles` do `a` (the other actions left to the default).
ChannelRule rule(std::string pattern, PolicyAction a, std::vector<std::string> roles) {
  ChannelRule r{.pattern = std::move(pattern)};
  r.rolesOf(a) = std::move(roles);
  return r;
}

/// "<channel> <CodeName>" of a one-way failure, and whether its message says why.
std::string describe(const SendFailure& f) {
  const bool why = f.error.message.find("denied by policy") != std::string::npos ||
                   f.error.message.find("(policy)") != std::string::npos;
  return f.channel + " " + errorCodeName(f.error.code) + (why ? "" : " (no reason given: " + f.error.message + ")");
}

/// "<what> <CodeName>" of a call's outcome.
std::string outcome(const std::string& what, Call call) {
  auto r = call.get();
  return what + " " + errorCodeName(r.code());
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("each channel rule denies each pattern with Denied at the sender; what it allows still works") {
  Policy p;  // default allow: only the rules below deny
  p.channels = {
      rule("win.send.denied", PolicyAction::Send, {"viewer", "main"}),    // editor may not send it
      rule("main.hears.not", PolicyAction::Receive, {"editor", "viewer"}),  // main's listeners may not hear it
      rule("viewer.hears.not", PolicyAction::Receive, {"editor", "main"}),  // viewer may not hear it
      rule("call.denied", PolicyAction::Invoke, {"viewer"}),             // editor and main may not call it
      rule("main.handles.not", PolicyAction::Handle, {"viewer"}),         // main's handler may not answer it
      rule("viewer.handles.not", PolicyAction::Handle, {"main"}),         // viewer's handler may not answer it
      rule("main.sends.not", PolicyAction::Send, {"editor", "viewer"}),   // main may not push or broadcast it
      rule("ok.*", PolicyAction::Send, {"*"}),                            // a glob allowing what follows
  };
  p.roleRule("editor").maxMessageBytes = 1024;
  TestBus tb("policy", {}, /*dispatch=*/false);
  REQUIRE(tb->setPolicy(p).ok());
  std::vector<Registration> mainRegs;
  for (const char* ch : {"call.denied", "main.handles.not", "ok.call"}) mainRegs.push_back(tb->handle(ch, echoHandler()));
  Mailbox heardByMain(*tb.sup, "ok.send");
  std::atomic<int> forbiddenHeard{0};
  for (const char* ch : {"win.send.denied", "main.hears.not"}) {
    mainRegs.push_back(tb->on(ch, [&](const Message&, const CallContext&) { ++forbiddenHeard; }));
  }

  // The viewer: handlers and listeners on every channel; reports what it heard once it hears the
  // parent's last push ("ok.send" "last": everything routed to it before is in its inbox first).
  Link viewerLink;
  Child viewer = Child::fork([&] {
    auto w = connectWindow(tb.bus, "viewer");
    Inbox failures, heard;
    auto f = w->onSendFailed([&](const SendFailure& sf) { failures.add(describe(sf)); });
    std::vector<Registration> regs;
    for (const char* ch : {"call.denied", "main.handles.not", "viewer.handles.not", "ok.call"}) {
      regs.push_back(w->handle(ch, echoHandler()));
    }
    for (const char* ch : {"win.send.denied", "viewer.hears.not", "main.sends.not", "ok.send"}) {
      regs.push_back(w->on(ch, [&heard, ch](const Message& m, const CallContext& ctx) {
        heard.add(std::string(ch) + ":" + std::string(ctx.sourceRole) + ":" + textOf(m));
      }));
    }
    announceReady(*w);
    for (;;) {
      const std::string got = heard.await(heard.size() + 1, 30s);
      if (got.ends_with("ok.send:main:last")) break;
    }
    viewerLink.tellParent(heard.await(0) + " | " + failures.await(1));
  });
  Link editorLink;
  GatedChild editor([&] {
    auto w = connectWindow(tb.bus, "editor");
    Inbox failures;
    auto f = w->onSendFailed([&](const SendFailure& sf) { failures.add(describe(sf)); });
    w->startDispatchThread();
    // One-way: written locally, then reported back by the supervisor.
    for (const char* ch : {"win.send.denied", "main.hears.not", "ok.send"}) expectOk(w->send(ch, text("e")), ch);
    for (const char* ch : {"win.send.denied", "viewer.hears.not", "ok.send"}) {
      expectOk(w->sendTo("viewer", ch, text("e")), ch);
    }
    expectOk(w->send("ok.send", text(std::string(2000, 'x'))), "over the role's limit");
    std::vector<std::string> calls;
    for (const char* ch : {"call.denied", "main.handles.not", "ok.call"}) {
      calls.push_back(outcome(std::string("main:") + ch, w->invoke(ch, text("e"))));
    }
    for (const char* ch : {"call.denied", "main.handles.not", "viewer.handles.not", "ok.call"}) {
      calls.push_back(outcome(std::string("viewer:") + ch, w->invokeIn("viewer", ch, text("e"))));
    }
    calls.push_back(outcome("main:big", w->invoke("ok.call", text(std::string(2000, 'x')))));
    // A round trip the supervisor handles after everything above: the reports are in by now.
    childCheck(w->invoke("sync").get().code() == ErrorCode::NoHandler, "round trip");
    std::string out = failures.await(5);
    for (const auto& c : calls) out += "," + c;
    editorLink.tellParent(out);
  });
  tb->startDispatchThread();
  const std::uint32_t viewerId = tb.awaitReady("viewer");
  editor.go();
  const std::string editorSaw = editorLink.hearChild();
  CHECK(editor.join(10s) == 0);
  INFO("editor: " << editorSaw);
  for (const char* expected :
       {"win.send.denied Denied", "main.hears.not Denied", "viewer.hears.not Denied", "ok.send TooLarge",
        "main:call.denied Denied", "main:main.handles.not Denied", "main:ok.call Ok", "viewer:call.denied Denied",
        "viewer:main.handles.not Ok", "viewer:viewer.handles.not Denied", "viewer:ok.call Ok", "main:big TooLarge"}) {
    CHECK_MESSAGE(has(editorSaw, expected), expected);
  }
  CHECK(std::count(editorSaw.begin(), editorSaw.end(), ',') == 12);  // 5 failures + 8 calls: nothing else
  CHECK_FALSE(has(editorSaw, "no reason given"));
  CHECK(heardByMain.next().role == "editor");  // the allowed send to main got through

  // The main process's own patterns.
  auto push = [&](const char* ch) { return tb->send(Target(viewerId), ch, text("m")).code(); };
  CHECK(push("viewer.hears.not") == ErrorCode::Denied);
  CHECK(push("main.sends.not") == ErrorCode::Denied);
  CHECK(push("ok.send") == ErrorCode::Ok);
  auto push2 = tb->send(Target(viewerId), "main.sends.not", text("m"));
  CHECK(has(push2.error().message, "send 'main.sends.not' from main to role 'viewer'"));
  CHECK(has(push2.error().message, "denied by policy (role 'main' may not send 'main.sends.not'"));
  CHECK(tb->invoke("viewer", "call.denied", text("m")).get().code() == ErrorCode::Denied);
  CHECK(tb->invoke("viewer", "viewer.handles.not", text("m")).get().code() == ErrorCode::Denied);
  CHECK(replyText(tb->invoke("viewer", "ok.call", text("m")), "main calls the viewer") == "m");
  auto b = tb->broadcast("viewer.hears.not", text("m"), {.roles = {"viewer"}});
  REQUIRE(b.ok());
  CHECK(b->delivered == 0);
  REQUIRE(b->failed.size() == 1);
  CHECK(b->failed[0].first == viewerId);
  CHECK(b->failed[0].second.code == ErrorCode::Denied);
  CHECK(tb->broadcast("main.sends.not", text("m")).code() == ErrorCode::Denied);
  CHECK(tb->broadcast("ok.send", text("b")).ok());
  CHECK(tb->send(Target(viewerId), "ok.send", text("last")).ok());

  const std::string viewerSaw = viewerLink.hearChild();
  CHECK(viewer.join(10s) == 0);
  INFO("viewer: " << viewerSaw);
  // Heard: the editor's allowed sendTo, main's allowed pushes and broadcast; nothing denied.
  CHECK(viewerSaw == "ok.send:editor:e,ok.send:main:m,ok.send:main:b,ok.send:main:last | viewer.handles.not Denied");
  CHECK(forbiddenHeard.load() == 0);
  // Editor: 4 one-way + 4 calls denied, 2 over its limit; viewer: its handler registration;
  // main: 3 pushes, 2 calls, 1 broadcast delivery, 1 broadcast.
  CHECK(tb->stats().policyDenials == 4 + 4 + 2 + 1 + 3 + 2 + 1 + 1);
}

TEST_CASE("the default decides what no rule speaks for; admission and per-role window caps come from the policy") {
  Policy p;
  p.defaultDecision = Decision::Deny;
  p.defaultAdmission = RoleAdmission::Invited;
  p.roleRule("editor").admission = RoleAdmission::Open;
  p.roleRule("editor").maxWindows = 1;
  ChannelRule open{.pattern = "open.*", .send = std::vector<std::string>{"*"},
                   .invoke = std::vector<std::string>{"*"}, .handle = std::vector<std::string>{"*"},
                   .receive = std::vector<std::string>{"*"}};
  p.channels = {open};
  TestBus tb("policy-default", {}, /*dispatch=*/false);
  REQUIRE(tb->setPolicy(p).ok());
  auto h1 = tb->handle("open.echo", echoHandler());
  auto h2 = tb->handle("closed.echo", echoHandler());
  Link link;
  Child child = Child::fork([&] {
    WindowOptions o;
    o.bus = tb.bus;
    o.role = "viewer";  // no rule of its own: the default admission, invited
    auto viewer = Window::connect(o);
    childCheck(viewer.code() == ErrorCode::Denied, "viewer connects by path");
    childCheck(has(viewer.error().message, "by invitation only (open roles: editor)"), viewer.error().message);
    auto w = connectWindow(tb.bus, "editor");
    o.role = "editor";
    auto second = Window::connect(o);
    childCheck(second.code() == ErrorCode::Full, "a second editor");
    childCheck(has(second.error().message, "role 'editor' on bus '" + tb.bus + "' has reached its cap of 1 windows"),
               second.error().message);
    childCheck(replyText(w->invoke("open.echo", text("hi")), "open.echo") == "hi", "open.echo");
    auto closed = w->invoke("closed.echo", text("hi")).get();
    childCheck(closed.code() == ErrorCode::Denied, "closed.echo");
    link.tellParent(closed.error().message);
  });
  tb->startDispatchThread();
  const std::string said = link.hearChild();
  CHECK(child.join(10s) == 0);
  CHECK(said == "invoke 'closed.echo' from role 'editor' (window 2): denied by policy (role 'editor' may not invoke "
                "'closed.echo': the default)");
  CHECK(tb->stats().refusedWindows == 1);
  // spawn() honours the role cap too (the editor above has gone: wait until the bus knows).
  REQUIRE(awaitCondition([&] { return tb->windows().empty(); }, 10s));
  auto a = tb->spawn("editor", {"/bin/sleep", "30"});
  REQUIRE(a.ok());
  auto b = tb->spawn("editor", {"/bin/sleep", "30"});
  CHECK(b.code() == ErrorCode::Full);
  ::kill(a->pid, SIGKILL);
}

TEST_CASE("setPolicy replaces the policy for every later frame: a call denied before is allowed after, and back") {
  TestBus tb("policy-swap", {}, /*dispatch=*/false);
  auto h = tb->handle("flip", echoHandler());
  Policy deny;
  deny.channels = {rule("flip", PolicyAction::Invoke, {"main"})};
  REQUIRE(tb->setPolicy(deny).ok());
  Link link;
  Child child = Child::fork([&] {
    auto w = connectWindow(tb.bus, "editor");
    for (int round = 0; round < 3; ++round) {
      link.tellParent(errorCodeName(w->invoke("flip", text("x")).get().code()));
      link.hearParent();
    }
  });
  tb->startDispatchThread();
  CHECK(link.hearChild() == std::string("Denied"));
  REQUIRE(tb->setPolicy(Policy{}).ok());  // the open policy
  link.tellChild("next");
  CHECK(link.hearChild() == std::string("Ok"));
  REQUIRE(tb->setPolicy(deny).ok());
  link.tellChild("next");
  CHECK(link.hearChild() == std::string("Denied"));
  link.tellChild("done");
  CHECK(child.join(10s) == 0);
  // A bad policy is refused and the one in force stays.
  Policy bad;
  bad.roles.push_back(RoleRule{.name = "a/b"});
  CHECK(tb->setPolicy(bad).code() == ErrorCode::InvalidArgument);
  CHECK(renderPolicy(tb->policy()) == renderPolicy(deny));
}

TEST_CASE("a role's max-pending-calls and max-bytes-in-flight refuse the next call with Full; others are not held") {
  Policy p;
  p.roleRule("counted").maxPendingCalls = 2;      // below the bus's 8192
  p.roleRule("weighed").maxBytesInFlight = 1500;  // about one 1000-character request
  TestBus tb("policy-inflight", {}, /*dispatch=*/false);
  REQUIRE(tb->setPolicy(p).ok());
  HeldCalls held(*tb.sup, "hold");
  auto echo = tb->handle("echo", echoHandler());
  const std::string big(1000, 'b');
  Link link;
  Child child = Child::fork([&] {
    auto counted = connectWindow(tb.bus, "counted");
    auto weighed = connectWindow(tb.bus, "weighed");
    auto other = connectWindow(tb.bus, "other");
    std::vector<Call> calls;
    for (int i = 0; i < 2; ++i) calls.push_back(counted->invoke("hold", text("x"), {.timeout = 30000ms}));
    calls.push_back(weighed->invoke("hold", text(big), {.timeout = 30000ms}));
    link.tellParent("held");
    childCheck(link.hearParent(60s) == "go", "go");
    auto third = counted->invoke("echo", text("x")).get();
    childCheck(third.code() == ErrorCode::Full, "counted's third call: " + third.error().toString());
    childCheck(has(third.error().message, "2 calls in flight (the policy's max-pending-calls of its role)"),
               third.error().message);
    auto heavy = weighed->invoke("echo", text(big)).get();
    childCheck(heavy.code() == ErrorCode::Full, "weighed's second big call: " + heavy.error().toString());
    childCheck(has(heavy.error().message, "more would pass the 1500 bytes of the policy's max-bytes-in-flight of role "
                                          "'weighed'"),
               heavy.error().message);
    // Within its bytes, the weighed window still calls; a role without limits is not held at all.
    childCheck(replyText(weighed->invoke("echo", text("small")), "weighed's small call") == "small", "small");
    for (int i = 0; i < 4; ++i) calls.push_back(other->invoke("hold", text(big), {.timeout = 30000ms}));
    link.tellParent("refused");
    childCheck(link.hearParent(60s) == "answered", "go again");
    for (auto& c : calls) expectOk(c.get(), "held call");
    childCheck(replyText(counted->invoke("echo", text("again")), "counted again") == "again", "counted again");
    childCheck(replyText(weighed->invoke("echo", text(big)), "weighed again") == big, "weighed again");
  });
  tb->startDispatchThread();
  REQUIRE(link.hearChild() == "held");
  REQUIRE(held.await(3));  // every held call reached the handler: the router counts them in flight
  link.tellChild("go");
  REQUIRE(link.hearChild() == "refused");
  REQUIRE(held.await(7));  // the unlimited role's four big calls were not refused
  CHECK(tb->stats().overPendingLimit == 2);
  held.answerAll();
  link.tellChild("answered");
  CHECK(child.join(30s) == 0);
}
