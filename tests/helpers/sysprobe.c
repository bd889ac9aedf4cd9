/* Calls each system call podman's default profile blocks and capsa's
 * deny list once let through, with arguments no kernel accepts, and prints
 * "name errno": EPERM (1) from the seccomp filter, anything else from the
 * kernel itself. Static, so it runs in any image and in a guest. */
#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

struct probe { const char *name; long nr; };

int main(void) {
    struct probe probes[] = {
        {"quotactl_fd", 443},
        {"migrate_pages", 256},
        {"process_madvise", 440},
        {"futex_waitv", 449},
        {"set_mempolicy_home_node", 450},
        {"cachestat", 451},
    };
    for (unsigned i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        errno = 0;
        long r = syscall(probes[i].nr, -1L, -1L, -1L, -1L, -1L);
        printf("%s %d\n", probes[i].name, r == -1 ? errno : 0);
    }
    return 0;
}
