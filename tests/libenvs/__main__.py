import sys

from . import HERE, SHIPPED, ensure_env

for arg in sys.argv[1:] or sorted({p.stem for p in (*HERE.glob("*.txt"), *SHIPPED.glob("*.txt"))}):
    print(ensure_env(arg))
