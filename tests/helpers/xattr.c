/* A static xattr tool for the parity tests (the demo image's busybox has
 * none): xattr set FILE NAME VALUE | xattr get FILE NAME */
#include <stdio.h>
#include <string.h>
#include <sys/xattr.h>

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "set") == 0) {
        if (setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), 0) != 0) {
            perror("setxattr");
            return 1;
        }
        return 0;
    }
    if (argc == 4 && strcmp(argv[1], "get") == 0) {
        char buf[256];
        ssize_t n = getxattr(argv[2], argv[3], buf, sizeof buf - 1);
        if (n < 0) {
            perror("getxattr");
            return 1;
        }
        buf[n] = 0;
        printf("%s\n", buf);
        return 0;
    }
    fprintf(stderr, "usage: xattr set FILE NAME VALUE | xattr get FILE NAME\n");
    return 2;
}
