#!/usr/bin/env python3
"""OpenBLAS kernel families (OPENBLAS_CORETYPE values) on this CPU, for scripts/test.sh.

  openblas-coretype.py default   the family OpenBLAS picks by itself here
  openblas-coretype.py second    another family this CPU can run, from another kernel generation
                                 (AVX-512 -> Haswell, AVX2 -> Sandybridge, AVX -> Nehalem); empty if none
  openblas-coretype.py all       every family this CPU can run (newest first)
"""
import ctypes
import ctypes.util
import sys

# Family -> the CPU flags (/proc/cpuinfo) its kernels need; newest first.
FAMILIES = [
    ("Cooperlake", {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"}),
    ("SkylakeX", {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"}),
    ("Zen", {"avx2", "fma"}),
    ("Haswell", {"avx2", "fma"}),
    ("Sandybridge", {"avx"}),
    ("Nehalem", {"sse4_2", "ssse3"}),
    ("Core2", {"ssse3"}),
    ("Prescott", {"pni"}),
]
SECOND = {"Cooperlake": "Haswell", "SkylakeX": "Haswell", "SapphireRapids": "Haswell",
          "Haswell": "Sandybridge", "Zen": "Sandybridge", "Sandybridge": "Nehalem"}


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_family():
    for name in ("libopenblas.so.0", ctypes.util.find_library("openblas")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
            lib.openblas_get_corename.restype = ctypes.c_char_p
            return lib.openblas_get_corename().decode()
        except (OSError, AttributeError):
            continue
    return ""


def runnable():
    flags = cpu_flags()
    return [name for name, needs in FAMILIES if needs <= flags]


def second_family():
    default, can = default_family(), runnable()
    wanted = SECOND.get(default, "Sandybridge")
    if wanted in can and wanted.lower() != default.lower():
        return wanted
    others = [f for f in can if f.lower() != default.lower()]
    return others[0] if others else ""


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "second"
    if what == "default":
        print(default_family())
    elif what == "all":
        print(" ".join(runnable()))
    else:
        print(second_family())
