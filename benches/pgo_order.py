"""The proxy's link order: every function it runs, the profile's hottest first, a symbol a line.

    llvm-profdata show --all-functions --counts PROFILE | python3 benches/pgo_order.py RAN... >ORDER

RAN: files of symbols a proxy ran (`FUNCTIONS=FILE bash benches/callgrind.sh`), for what the
profile cannot name: the precompiled standard library, glibc, jemalloc and aws-lc's C code.
benches/pgo_order.sh writes proxy/pgo/pillion-proxy.order.xz with it; scripts/build-release.sh
hands it to the linker (`--symbol-ordering-file`), which places these functions first and
together. Without it the code a running proxy touches is spread over the whole 8 MB of `.text`,
and the kernel maps 64 KB around every page touched: most of the binary was resident. Functions
named nowhere (never run) follow in the linker's own order.
"""

import re
import sys


def executed(lines):
    """(highest block count, symbol) of each function that ran."""
    name = None
    for line in lines:
        # "  [module;]symbol:" opens a function; local symbols carry their module before ';'.
        if line.startswith("  ") and not line.startswith("   ") and line.rstrip().endswith(":"):
            name = line.strip()[:-1].split(";", 1)[-1]
            continue
        m = re.match(r"\s+Block counts: \[(.*)\]", line)
        if m and name:
            counts = [int(c) for c in m.group(1).split(",") if c.strip()]
            if counts and max(counts) > 0:
                yield max(counts), name
            name = None


def main():
    seen = set()
    for _, name in sorted(executed(sys.stdin), key=lambda r: -r[0]):
        if name not in seen:
            seen.add(name)
            print(name)
    ran = set()
    for path in sys.argv[1:]:
        with open(path) as f:
            ran.update(line.strip() for line in f if line.strip())
    for name in sorted(ran - seen):
        print(name)


if __name__ == "__main__":
    main()
