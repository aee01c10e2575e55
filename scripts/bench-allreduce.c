// What Open MPI's non-blocking allreduce costs for the default UNet's gradient (3,717,121 floats in
// the trainer's 1 MiB buckets), in place (MPI_IN_PLACE, as segtrain summed before) and from one
// buffer into another (as DataParallelStep sums now). Nothing else runs: the time is the sum alone.
// malloc is set as segtrain sets it under MPI (freed memory stays mapped; see Communicator.start).
//   mpicc -O2 scripts/bench-allreduce.c -o /tmp/bench-allreduce
//   mpirun -np 2 --bind-to core /tmp/bench-allreduce [floats] [repetitions]
#include <malloc.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const int count = argc > 1 ? atoi(argv[1]) : 3717121, repetitions = argc > 2 ? atoi(argv[2]) : 40;
    const int bucket = 1 << 18, buckets = (count + bucket - 1) / bucket;
    float *gradient = malloc(sizeof(float) * count), *summed = malloc(sizeof(float) * count);
    MPI_Request *requests = malloc(sizeof(MPI_Request) * buckets);
    if (!gradient || !summed || !requests) { fprintf(stderr, "out of memory\n"); MPI_Abort(MPI_COMM_WORLD, 1); }
    for (int i = 0; i < count; i++) { gradient[i] = 1.0f / (1 + i % 7); summed[i] = 0; }
    for (int round = 0; round < 3; round++) {
        for (int separate = 0; separate < 2; separate++) {
            double seconds = 0;
            for (int k = 0; k < repetitions; k++) {
                if (MPI_Barrier(MPI_COMM_WORLD) != MPI_SUCCESS) MPI_Abort(MPI_COMM_WORLD, 1);
                double start = MPI_Wtime();
                for (int b = 0; b < buckets; b++) {
                    int offset = b * bucket, n = count - offset < bucket ? count - offset : bucket;
                    int rc = separate
                        ? MPI_Iallreduce(gradient + offset, summed + offset, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &requests[b])
                        : MPI_Iallreduce(MPI_IN_PLACE, gradient + offset, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &requests[b]);
                    if (rc != MPI_SUCCESS) MPI_Abort(MPI_COMM_WORLD, 1);
                }
                if (MPI_Waitall(buckets, requests, MPI_STATUSES_IGNORE) != MPI_SUCCESS) MPI_Abort(MPI_COMM_WORLD, 1);
                seconds += MPI_Wtime() - start;
                // In place, the sums grow: start each repetition from the same values.
                if (!separate) for (int i = 0; i < count; i++) gradient[i] = 1.0f / (1 + i % 7);
            }
            if (rank == 0) {
                printf("%d ranks, %d floats in %d buckets, %-30s %7.2f ms per sum\n", size, count, buckets,
                       separate ? "from one buffer into another:" : "in place:", 1000 * seconds / repetitions);
            }
        }
    }
    free(gradient); free(summed); free(requests);
    MPI_Finalize();
    return 0;
}
