// pm2 process file for the miner:  pm2 start configs/ecosystem.config.js --only flashvsr-miner
// Runs the repository's virtual environment's Python; logs go to ./logs/. Edit `args` and `env`
// (or configs/miner.toml / a local TOML passed with --config) for your wallet, port and storage.
//
// GPUs on several hosts (docs/cluster.md; pip install -e ".[cluster]" on every host):
//   public host:  pm2 start configs/ecosystem.config.js --only ray-head,flashvsr-miner
//                 with FLASHVSR_MINER_CLUSTER_BACKEND=ray in the miner's env below
//   each GPU host: RAY_HEAD=<public-host-private-ip>:6379 pm2 start configs/ecosystem.config.js --only ray-gpu-node
const path = require("path");

const root = path.resolve(__dirname, "..");
const ray = path.join(root, ".venv", "bin", "ray");
const rayEnv = {
  RAY_USAGE_STATS_ENABLED: "0",
  // RAY_AUTH_MODE: "token",               // with the same token on every host (~/.ray/auth_token)
};

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
        // FLASHVSR_MINER_CLUSTER_BACKEND: "ray",                   // workers as Ray actors (ray-head below)
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
    {
      name: "ray-head",           // on the public host, before the miner: the cluster the GPU hosts join
      cwd: root,
      script: ray,
      args: ["start", "--head", "--block", "--port", "6379", "--num-gpus", "0", "--dashboard-host", "127.0.0.1"],
      interpreter: "none",
      env: rayEnv,
      autorestart: true,
      restart_delay: 5000,
      kill_timeout: 30000,
      out_file: path.join(root, "logs", "ray-head.out.log"),
      error_file: path.join(root, "logs", "ray-head.err.log"),
      merge_logs: true,
    },
    {
      name: "ray-gpu-node",       // on each GPU host: joins the head; the miner places one actor per GPU
      cwd: root,
      script: ray,
      args: ["start", "--block", "--address", process.env.RAY_HEAD || "127.0.0.1:6379"],
      interpreter: "none",
      env: rayEnv,
      autorestart: true,
      restart_delay: 5000,
      kill_timeout: 30000,
      out_file: path.join(root, "logs", "ray-node.out.log"),
      error_file: path.join(root, "logs", "ray-node.err.log"),
      merge_logs: true,
    },
  ],
};
