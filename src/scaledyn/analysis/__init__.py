"""What is measured from checkpoints: per-token losses (`evaluate`) into the Parquet loss dataset
(`losses`), zero-sum learning between checkpoints (`zsl`), the one-step replay and its gradient
view (`onestep`), and published checkpoint suites analysed the same way (`suites`)."""
