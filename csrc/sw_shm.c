/* sw_shm.c - see sw_shm.h for the contract. */
#define _GNU_SOURCE
#include "sw_shm.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int sw_shm_anon(sw_shm *m, size_t size)
{
    void *p;
    m->base = NULL;
    m->size = 0;
    if (size < SW_SHM_HDR_SIZE)
        return -EINVAL;
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    m->base = p;
    m->size = size;
    return 0;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int sw_shm_open(sw_shm *m, const char *path, size_t size, int *created, int wait_ms)
{
    struct stat st;
    void *p;
    int fd, rc = 0, waited = 0;

    m->base = NULL;
    m->size = 0;
    *created = 0;
    if (size < SW_SHM_HDR_SIZE)
        return -EINVAL;
    fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        if (ftruncate(fd, (off_t)size) != 0) {
            rc = -errno;
            close(fd);
            unlink(path);
            return rc;
        }
        *created = 1;
    } else {
        if (errno != EEXIST)
            return -errno;
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        /* The creator may not have set the size yet. */
        for (;;) {
            if (fstat(fd, &st) != 0) {
                rc = -errno;
                close(fd);
                return rc;
            }
            if ((size_t)st.st_size == size)
                break;
            if (st.st_size != 0 || waited >= wait_ms) {
                close(fd);
                return st.st_size != 0 ? SW_SHM_ESHAPE : SW_SHM_ETIMEOUT;
            }
            sleep_ms(1);
            waited++;
        }
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    rc = p == MAP_FAILED ? -errno : 0;
    close(fd); /* the mapping keeps the file open */
    if (rc != 0) {
        if (*created)
            unlink(path);
        return rc;
    }
    m->base = p;
    m->size = size;
    if (!*created) {
        while (!sw_shm_ready((const sw_shm_hdr *)p)) {
            if (waited >= wait_ms) {
                sw_shm_unmap(m);
                return SW_SHM_ETIMEOUT;
            }
            sleep_ms(1);
            waited++;
        }
    }
    return 0;
}

void sw_shm_publish(sw_shm_hdr *h)
{
    /* Release: every header (and payload) write above happens-before any
     * acquire load that sees the magic. */
    __atomic_store_n(&h->magic, SW_SHM_MAGIC, __ATOMIC_RELEASE);
}

int sw_shm_ready(const sw_shm_hdr *h)
{
    return __atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) == SW_SHM_MAGIC;
}

void sw_shm_unmap(sw_shm *m)
{
    if (m->base != NULL)
        munmap(m->base, m->size);
    m->base = NULL;
    m->size = 0;
}

int sw_shm_unlink(const char *path)
{
    return unlink(path) == 0 ? 0 : -errno;
}
