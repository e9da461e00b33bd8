import sys

name = sys.stdin.readline().strip() or "world"
print(f"hello, {name}")
print("arguments:", sys.argv[1:])
