/* An MPI profiling (PMPI) wrapper that counts, per rank, the bytes rowstage
 * hands to MPI, apart from rowstage's own count: tests/mpi.rs preloads it
 * (LD_PRELOAD) under mpirun and compares its figures with the report's
 * `wire_bytes_by_rank`. rowstage sends everything with MPI_Isend; tag 0 is
 * the model's rows, any other tag a control figure. Blocking sends and
 * collectives are counted too, so that a change that starts using them is
 * seen. At MPI_Finalize each rank writes "model control other" bytes to
 * $ROWSTAGE_PMPI_OUT/rank<N>. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static long long model_bytes, control_bytes, other_bytes;

static long long bytes_of(int count, MPI_Datatype type) {
    int size = 0;
    PMPI_Type_size(type, &size);
    return (long long)count * size;
}

int MPI_Isend(const void *buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm,
              MPI_Request *request) {
    if (tag == 0)
        model_bytes += bytes_of(count, type);
    else
        control_bytes += bytes_of(count, type);
    return PMPI_Isend(buf, count, type, dest, tag, comm, request);
}

int MPI_Send(const void *buf, int count, MPI_Datatype type, int dest, int tag, MPI_Comm comm) {
    other_bytes += bytes_of(count, type);
    return PMPI_Send(buf, count, type, dest, tag, comm);
}

int MPI_Allgatherv(const void *sendbuf, int sendcount, MPI_Datatype sendtype, void *recvbuf,
                   const int recvcounts[], const int displs[], MPI_Datatype recvtype, MPI_Comm comm) {
    int n = 1;
    PMPI_Comm_size(comm, &n);
    other_bytes += bytes_of(sendcount, sendtype) * (n - 1);
    return PMPI_Allgatherv(sendbuf, sendcount, sendtype, recvbuf, recvcounts, displs, recvtype, comm);
}

int MPI_Allgather(const void *sendbuf, int sendcount, MPI_Datatype sendtype, void *recvbuf,
                  int recvcount, MPI_Datatype recvtype, MPI_Comm comm) {
    int n = 1;
    PMPI_Comm_size(comm, &n);
    other_bytes += bytes_of(sendcount, sendtype) * (n - 1);
    return PMPI_Allgather(sendbuf, sendcount, sendtype, recvbuf, recvcount, recvtype, comm);
}

int MPI_Finalize(void) {
    int rank = 0;
    PMPI_Comm_rank(MPI_COMM_WORLD, &rank);
    const char *dir = getenv("ROWSTAGE_PMPI_OUT");
    if (dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/rank%d", dir, rank);
        FILE *f = fopen(path, "w");
        if (f) {
            fprintf(f, "%lld %lld %lld\n", model_bytes, control_bytes, other_bytes);
            fclose(f);
        }
    }
    return PMPI_Finalize();
}
