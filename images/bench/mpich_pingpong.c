/* MPICH baseline for `vmpi bench`: ping-pong latency and streaming bandwidth
 * between two ranks over MPICH's shared memory, timed like the fabric rounds.
 *
 *   mpiexec -n 2 -bind-to core ./mpich_pingpong lat SIZE ITERS WARMUP
 *   mpiexec -n 2 -bind-to core ./mpich_pingpong bw SIZE WINDOW REPS
 *
 * lat: rank 0 prints "samples" then one round-trip time per iteration in TSC
 *      ticks (rdtsc), one per line, then "end".
 * bw:  rank 0 sends REPS windows of WINDOW messages of SIZE bytes (MPI_Isend,
 *      then MPI_Waitall; rank 1 posts matching MPI_Irecvs), rank 1 answers each
 *      window with a 4-byte ack; rank 0 prints "bw_ticks N" (total TSC ticks). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <x86intrin.h>

#define TAG 7
#define MAX_WINDOW 64

static long arg(char **argv, int i) { return strtol(argv[i], NULL, 10); }

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc != 5 || size != 2) {
        if (rank == 0)
            fprintf(stderr, "usage: mpiexec -n 2 %s lat SIZE ITERS WARMUP | bw SIZE WINDOW REPS\n",
                    argv[0]);
        MPI_Finalize();
        return 2;
    }
    long len = arg(argv, 2);
    char *buf = aligned_alloc(64, (size_t)(len < 64 ? 64 : (len + 63) / 64 * 64));
    char *rbuf = aligned_alloc(64, (size_t)(len < 64 ? 64 : (len + 63) / 64 * 64));
    if (!buf || !rbuf) MPI_Abort(MPI_COMM_WORLD, 3);
    memset(buf, 0x5a, (size_t)len);
    int peer = 1 - rank;
    if (strcmp(argv[1], "lat") == 0) {
        long iters = arg(argv, 3), warm = arg(argv, 4);
        unsigned long long *t = malloc(sizeof(*t) * (size_t)(iters > 0 ? iters : 1));
        if (!t) MPI_Abort(MPI_COMM_WORLD, 3);
        MPI_Barrier(MPI_COMM_WORLD);
        for (long i = 0; i < warm + iters; i++) {
            if (rank == 0) {
                unsigned long long t0 = __rdtsc();
                MPI_Send(buf, (int)len, MPI_BYTE, peer, TAG, MPI_COMM_WORLD);
                MPI_Recv(rbuf, (int)len, MPI_BYTE, peer, TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                unsigned long long t1 = __rdtsc();
                if (i >= warm) t[i - warm] = t1 - t0;
            } else {
                MPI_Recv(rbuf, (int)len, MPI_BYTE, peer, TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
                MPI_Send(buf, (int)len, MPI_BYTE, peer, TAG, MPI_COMM_WORLD);
            }
        }
        if (rank == 0) {
            printf("samples\n");
            for (long i = 0; i < iters; i++) printf("%llu\n", t[i]);
            printf("end\n");
        }
        free(t);
    } else if (strcmp(argv[1], "bw") == 0) {
        long window = arg(argv, 3), reps = arg(argv, 4);
        if (window > MAX_WINDOW) window = MAX_WINDOW;
        MPI_Request req[MAX_WINDOW];
        MPI_Status st[MAX_WINDOW];
        int ack = 0;
        MPI_Barrier(MPI_COMM_WORLD);
        unsigned long long t0 = __rdtsc();
        for (long r = 0; r < reps; r++) {
            if (rank == 0) {
                for (long w = 0; w < window; w++)
                    MPI_Isend(buf, (int)len, MPI_BYTE, peer, TAG, MPI_COMM_WORLD, &req[w]);
                MPI_Waitall((int)window, req, st);
                MPI_Recv(&ack, 1, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                /* Every receive lands in the same buffer, as in OSU's osu_bw. */
                for (long w = 0; w < window; w++)
                    MPI_Irecv(rbuf, (int)len, MPI_BYTE, peer, TAG, MPI_COMM_WORLD, &req[w]);
                MPI_Waitall((int)window, req, st);
                MPI_Send(&ack, 1, MPI_INT, peer, TAG + 1, MPI_COMM_WORLD);
            }
        }
        unsigned long long t1 = __rdtsc();
        if (rank == 0) printf("bw_ticks %llu\n", t1 - t0);
    } else {
        if (rank == 0) fprintf(stderr, "mode must be lat or bw, not %s\n", argv[1]);
        MPI_Finalize();
        return 2;
    }
    fflush(stdout);
    free(buf);
    free(rbuf);
    MPI_Finalize();
    return 0;
}
