// LD_PRELOAD shim that counts heap allocations (malloc, calloc, realloc, posix_memalign,
// aligned_alloc, memalign), and those over 256 bytes apart. `segtrain bench` finds the counters
// with dlsym and reports the allocations made during its timed steps. Build: cc -O2 -shared -fPIC -o alloc_counter.so alloc_counter.c
#define _GNU_SOURCE
#include <stdatomic.h>
#include <stddef.h>
#include <errno.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static atomic_long allocations, large;

/// Allocations of more than this many bytes count as large: tensors, buffers, arrays.
#define LARGE 256

long segtrain_alloc_count(void) { return atomic_load(&allocations); }
long segtrain_large_alloc_count(void) { return atomic_load(&large); }

static void count(size_t n) {
    atomic_fetch_add(&allocations, 1);
    if (n > LARGE) atomic_fetch_add(&large, 1);
}

void *malloc(size_t n) { count(n); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count(a * b); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count(n); return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { count(n); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { count(n); return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    count(n);
    void *p = __libc_memalign(a, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
