#!/usr/bin/env python3
"""Runs capnpc-shmbus on schemas and compares its output with the golden headers.

Each schema is compiled on its own (golden.capnp and golden_v2.capnp share an interface id) into
a scratch directory with `capnp compile -o<plugin>:<dir>`, the way a build runs the plugin.
With --update the golden headers are rewritten instead (review the diff before committing).
"""
import argparse
import difflib
import pathlib
import subprocess
import sys
import tempfile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--capnp', required=True, help='the capnp compiler')
    ap.add_argument('--plugin', required=True, help='capnpc-shmbus')
    ap.add_argument('--import', dest='imports', action='append', default=[], help='capnp import path')
    ap.add_argument('--src', required=True, help='directory of the schemas (the --src-prefix)')
    ap.add_argument('--golden', required=True, help='directory of the golden .shmbus.h files')
    ap.add_argument('--update', action='store_true', help='rewrite the golden files')
    ap.add_argument('schemas', nargs='+', help='schema file names, relative to --src')
    args = ap.parse_args()

    src = pathlib.Path(args.src)
    golden = pathlib.Path(args.golden)
    failed = False
    with tempfile.TemporaryDirectory(prefix='shmbus-golden-') as scratch:
        for schema in args.schemas:
            cmd = [args.capnp, 'compile', f'--src-prefix={src}']
            cmd += [f'-I{i}' for i in args.imports]
            cmd += [f'-o{args.plugin}:{scratch}', str(src / schema)]
            subprocess.run(cmd, check=True)
            name = schema.removesuffix('.capnp') + '.shmbus.h'
            got = (pathlib.Path(scratch) / name).read_text()
            want_path = golden / name
            if args.update:
                want_path.write_text(got)
                print(f'updated {want_path}')
                continue
            want = want_path.read_text() if want_path.exists() else ''
            if got != want:
                failed = True
                sys.stdout.writelines(difflib.unified_diff(
                    want.splitlines(keepends=True), got.splitlines(keepends=True),
                    fromfile=str(want_path), tofile=f'capnpc-shmbus output for {schema}'))
            else:
                print(f'{name}: matches')
    if failed:
        print('\nThe generated code differs from the golden files. If the change is intended, run\n'
              '  ninja -C <builddir> codegen-update-goldens\nand review the diff.')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
