// capnpc-shmbus — Cap'n Proto compiler plugin generating typed shmbus contracts (docs/architecture.md §6).
//
// Run by `capnp compile -o<path>/capnpc-shmbus:<outdir> file.capnp` next to capnpc-c++. Like
// capnpc-capnp, it reads a CodeGeneratorRequest from stdin, loads every node into a
// capnp::SchemaLoader, and for each requested file writes `<file>.shmbus.h` (the name without
// `.capnp`) into its working directory, which capnp sets to the output directory. What the
// header declares: generator.cpp.
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/debug.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "generator.hpp"

namespace {

constexpr const char* kUsage =
    "usage: capnp compile -I<dir of shmbus.capnp> -oc++ -oshmbus [--src-prefix=DIR] FILE.capnp...\n"
    "       capnpc-shmbus --help | --version\n"
    "\n"
    "capnpc-shmbus is a Cap'n Proto compiler plugin: `capnp compile` runs it and writes a\n"
    "CodeGeneratorRequest to its standard input. For each FILE.capnp it writes FILE.shmbus.h (typed\n"
    "shmbus clients, handlers and channels for every interface) beside capnpc-c++'s FILE.capnp.h.\n"
    "`-oshmbus` finds it on PATH; `-o/path/to/capnpc-shmbus:OUTDIR` names it and the output\n"
    "directory. shmbus.capnp (the $timeoutMs, $oneway and $target annotations) is installed in\n"
    "<prefix>/include/shmbus/schemas.\n";

/// True when standard input cannot be a request from `capnp compile`: a terminal, or empty.
bool noRequestOnStdin() {
  if (::isatty(0) != 0) return true;
  struct stat st {};
  return ::fstat(0, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 0;
}

/// All of standard input as whole words (a trailing part of a word is dropped: no request ends so).
kj::Array<capnp::word> readRequest() {
  std::vector<char> bytes;
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(0, buf, sizeof buf);
    if (n > 0) {
      bytes.insert(bytes.end(), buf, buf + n);
    } else if (n == 0 || errno != EINTR) {
      break;
    }
  }
  auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  if (words.size() != 0) std::memcpy(words.begin(), bytes.data(), words.size() * sizeof(capnp::word));
  return words;
}

/// Writes each file into the working directory (capnp sets it to the output directory). Returns
/// false when one could not be written.
bool writeFiles(const std::vector<shmbus::codegen::GeneratedFile>& files) {
  bool ok = true;
  for (const auto& file : files) {
    if (const auto dir = std::filesystem::path(file.path).parent_path(); !dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
    }
    std::ofstream f(file.path, std::ios::binary | std::ios::trunc);
    f << file.text;
    f.close();
    if (!f) {
      std::fprintf(stderr, "capnpc-shmbus: cannot write %s\n", file.path.c_str());
      ok = false;
    }
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--version") {
      std::printf("capnpc-shmbus %s (Cap'n Proto %d.%d.%d)\n", SHMBUS_VERSION, CAPNP_VERSION_MAJOR, CAPNP_VERSION_MINOR,
                  CAPNP_VERSION_MICRO);
      return 0;
    }
    std::fprintf(stderr, "capnpc-shmbus: unknown argument '%s'\n\n%s", argv[i], kUsage);
    return 2;
  }
  if (noRequestOnStdin()) {
    std::fprintf(stderr, "capnpc-shmbus: no CodeGeneratorRequest on standard input: this is a plugin for "
                         "`capnp compile`, not a command to run by hand.\n\n%s", kUsage);
    return 2;
  }
  const kj::Array<capnp::word> words = readRequest();
  const kj::ArrayPtr<const capnp::word> request = words;
  if (words.size() == 0 || capnp::expectedSizeInWordsFromPrefix(request) > words.size()) {
    // A pipe closed before a whole request arrived: the same mistake as an empty file.
    std::fprintf(stderr, "capnpc-shmbus: standard input ended before a whole CodeGeneratorRequest: run it "
                         "through `capnp compile` (see --help).\n");
    return 2;
  }
  try {
    return writeFiles(shmbus::codegen::generateFromFlatArray(request)) ? 0 : 1;
  } catch (const kj::Exception& e) {
    std::fprintf(stderr, "capnpc-shmbus: %s\n", e.getDescription().cStr());
    return 1;
  }
}