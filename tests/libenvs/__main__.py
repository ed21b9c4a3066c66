from . import ensure_env, HERE
import sys
for arg in sys.argv[1:] or sorted(p.stem for p in HERE.glob("*.txt")):
    print(ensure_env(arg))
