// Small POSIX helpers that Swift cannot reach directly (GNU extensions, macros).
#pragma once

/// CPUs in this process's affinity mask (sched_getaffinity), or 0 if it cannot be read.
int segtrain_affinity_cpu_count(void);
