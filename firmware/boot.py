# Runs first on every boot. Kept minimal: a mistake here can lock out the REPL.
