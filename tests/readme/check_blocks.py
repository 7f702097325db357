#!/usr/bin/env python3
"""Checks that every code block of the READMEs is a verbatim excerpt of a file that is built or
run by a test, so that README code compiles.

Blocks tagged cpp, capnp, meson, cmake or ini must appear, line for line and contiguously, in one
of the source files under the --from directories (examples/, tests/consumer/: built by meson and
by the consumer tests). Blocks tagged sh and untagged blocks are commands and output: not checked.
"""
import argparse
import pathlib
import re
import sys

CHECKED = {'cpp', 'c++', 'capnp', 'meson', 'cmake', 'ini'}
SOURCES = {'.cpp', '.hpp', '.capnp', '.build', '.txt', '.sh'}


def blocks(text):
    """(tag, first line number, lines) of each fenced block."""
    for m in re.finditer(r'^```(\S*)\n(.*?)^```$', text, re.M | re.S):
        yield m.group(1), text.count('\n', 0, m.start()) + 1, m.group(2).splitlines()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--root', required=True, help='the source root')
    ap.add_argument('--from', dest='dirs', action='append', required=True, help='directory of built files')
    ap.add_argument('readmes', nargs='+', help='README files, relative to --root')
    args = ap.parse_args()
    root = pathlib.Path(args.root)
    files = {}
    for d in args.dirs:
        for f in sorted((root / d).rglob('*')):
            if f.is_file() and (f.suffix in SOURCES or f.name == 'meson.build'):
                files[f.relative_to(root)] = f.read_text().splitlines()
    failed = 0
    for readme in args.readmes:
        for tag, line, body in blocks((root / readme).read_text()):
            if tag not in CHECKED:
                continue
            found = next((name for name, lines in files.items()
                          if any(lines[i:i + len(body)] == body for i in range(len(lines) - len(body) + 1))), None)
            if found is None:
                failed += 1
                print(f'{readme}:{line}: this {tag} block is not an excerpt of a built file '
                      f'(under {", ".join(args.dirs)}); copy it from the file it shows')
            else:
                print(f'{readme}:{line}: {tag} block = {found}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
