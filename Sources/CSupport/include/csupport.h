// Small POSIX helpers that Swift cannot reach directly (GNU extensions, macros).
#pragma once

/// CPUs in this process's affinity mask (sched_getaffinity), or 0 if it cannot be read.
int segtrain_affinity_cpu_count(void);

/// Atomically exchanges two paths (renameat2 with RENAME_EXCHANGE; both must exist).
/// Returns 0, or -1 with errno set.
int segtrain_exchange_paths(const char *a, const char *b);

/// fsync of a directory (so a rename inside it is durable). Returns 0, or -1 with errno set.
int segtrain_fsync_directory(const char *path);

/// Installs handlers for SIGTERM and SIGUSR1 that only record the request (async-signal-safe).
void segtrain_install_stop_handlers(void);

/// The signal number that asked to stop (SIGTERM or SIGUSR1), or 0.
int segtrain_stop_signal(void);

/// Keeps freed heap memory mapped for reuse (mallopt: no mmap below 32 MiB, no trim below 64 MiB
/// of free heap top), so buffers freed and allocated again every step fault no fresh pages.
void segtrain_keep_freed_memory_mapped(void);
