"""Trading modes: live dispatch to the execution engine, paper trading, the decision log."""
