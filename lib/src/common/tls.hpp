// The TLS model of the thread-local variables on the call path.
#pragma once

/// Marks a `thread_local` that the call path touches (docs/architecture.md §10). In a shared
/// library a thread_local defaults to the general-dynamic model: every access calls
/// `__tls_get_addr` (about 30 instructions; callgrind counted 12 such calls, about 390
/// instructions, per window → main invoke on the supervisor). The initial-exec model makes it one
/// %fs-relative load. It places the variable in the static TLS block, which glibc also reserves for
/// libraries loaded later with dlopen() (its optional static TLS surplus, 512 bytes by default:
/// glibc.rtld.optional_static_tls); the variables marked here take under 100 bytes.
/// Source: Drepper, "ELF Handling For Thread-Local Storage", 2013, §4.3-4.4; GCC's
/// `tls_model` variable attribute.
#define SHMBUS_HOT_TLS __attribute__((tls_model("initial-exec")))
