# Runs after boot.py on every normal boot (not after a raw-REPL soft reset).
import app.node

app.node.main()
