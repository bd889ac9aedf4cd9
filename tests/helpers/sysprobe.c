/* Calls system calls a container's seccomp filter decides on, with
 * arguments no kernel accepts (or harmless ones), and prints "name errno"
 * per call (0: it succeeded). From the filter: EPERM (1) for what podman's
 * profile refuses, ENOSYS (38) for what the allow list leaves out (a
 * syscall newer than its table, a personality docker does not allow),
 * EINVAL (22) for a netlink audit socket without CAP_AUDIT_WRITE; anything
 * else comes from the kernel itself. Static, so it runs in any image and
 * in a guest. */
#include <errno.h>
#include <stdio.h>
#include <sys/personality.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

struct probe { const char *name; long nr; };

static void report(const char *name, long r) {
    printf("%s %d\n", name, r == -1 ? errno : 0);
}

int main(void) {
    struct probe probes[] = {
        {"quotactl_fd", 443},
        {"migrate_pages", 256},
        {"process_madvise", 440},
        {"futex_waitv", 449},
        {"set_mempolicy_home_node", 450},
        {"cachestat", 451},
        {"vmsplice", 278},
        /* Linux 6.7: newer than the allow list's table */
        {"futex_wake", 454},
    };
    for (unsigned i = 0; i < sizeof probes / sizeof probes[0]; i++) {
        errno = 0;
        report(probes[i].name, syscall(probes[i].nr, -1L, -1L, -1L, -1L, -1L));
    }
    errno = 0;
    int fd = socket(AF_NETLINK, SOCK_RAW, 9 /* NETLINK_AUDIT */);
    report("netlink_audit", fd);
    if (fd >= 0)
        close(fd);
    errno = 0;
    report("personality_no_randomize", syscall(SYS_personality, ADDR_NO_RANDOMIZE));
    errno = 0;
    report("personality_bsd", syscall(SYS_personality, PER_BSD));
    syscall(SYS_personality, PER_LINUX);
    return 0;
}
