// pm2 process file for the miner:  pm2 start configs/ecosystem.config.js
// Runs the repository's virtual environment's Python; logs go to ./logs/. Edit `args` and `env`
// (or configs/miner.toml / a local TOML passed with --config) for your wallet, port and storage.
const path = require("path");

const root = path.resolve(__dirname, "..");

module.exports = {
  apps: [
    {
      name: "flashvsr-miner",
      cwd: root,
      script: path.join(root, ".venv", "bin", "python"),
      args: ["-m", "miner"],
      interpreter: "none",
      env: {
        PYTHONUNBUFFERED: "1",
        // FLASHVSR_MINER_CONFIG: "/home/miner/miner.local.toml",   // your overrides of configs/miner.toml
        // FLASHVSR_MINER_SERVER_PORT: "8091",
        // MINER_STORAGE_S3_BUCKET_NAME: "...", MINER_STORAGE_S3_ENDPOINT_URL: "...",
        // MINER_STORAGE_S3_ACCESS_KEY_ID: "...", MINER_STORAGE_S3_SECRET_ACCESS_KEY: "...",
      },
      autorestart: true,
      max_restarts: 20,
      min_uptime: "60s",          // a start that dies sooner counts toward max_restarts
      restart_delay: 5000,
      exp_backoff_restart_delay: 2000,
      kill_timeout: 45000,        // SIGTERM, then this long (> server.shutdown_grace_s) before SIGKILL
      out_file: path.join(root, "logs", "miner.out.log"),
      error_file: path.join(root, "logs", "miner.err.log"),
      merge_logs: true,
      time: false,                // our log lines carry their own UTC timestamps
    },
  ],
};
