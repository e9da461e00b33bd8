#include <stdio.h>

int main(int argc, char **argv) {
    printf("hello from C with %d argument(s)\n", argc - 1);
    return 0;
}
