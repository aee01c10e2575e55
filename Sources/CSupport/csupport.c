#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <unistd.h>
#include "csupport.h"

int segtrain_affinity_cpu_count(void) {
#ifdef __linux__
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
    return CPU_COUNT(&set);
#else
    return 0;
#endif
}

int segtrain_exchange_paths(const char *a, const char *b) {
#ifdef __linux__
    return renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
#else
    errno = ENOSYS;
    return -1;
#endif
}

int segtrain_fsync_directory(const char *path) {
    int fd = open(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

#include <signal.h>
#include <string.h>

static volatile sig_atomic_t stop_signal = 0;

static void record_stop(int sig) { stop_signal = sig; }

void segtrain_install_stop_handlers(void) {
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = record_stop;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGUSR1, &action, NULL);
}

int segtrain_stop_signal(void) { return stop_signal; }

#if defined(SEGTRAIN_REQUIRE_AVX2) && defined(__x86_64__)
/* The Swift modules were compiled for AVX2 + FMA (Package.swift). On an older CPU their first
   vector instruction would kill the process with SIGILL; say why instead, before main runs.
   This file itself is compiled for the baseline x86-64, so the check runs anywhere. */
__attribute__((constructor))
static void segtrain_require_avx2(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return;
    static const char message[] =
        "segtrain: error: this CPU lacks AVX2/FMA, which this build of segtrain needs; "
        "rebuild with SEGTRAIN_TARGET_CPU=x86-64 swift build -c release\n";
    ssize_t ignored = write(2, message, sizeof message - 1);
    (void)ignored;
    _exit(1);
}
#endif

#include <malloc.h>

void segtrain_keep_freed_memory_mapped(void) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
}
