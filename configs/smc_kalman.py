"""Config of experiments/smc_kalman.py: bootstrap filter vs Kalman, and resampling throughput."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    # False skips the accuracy sweep (`--config.accuracy=False`: the throughput part alone).
    config.accuracy = True
    # Accuracy: a linear-Gaussian model (x_dim 3, y_dim 2), T steps, R replicate filters per
    # (method, particle count); errors of log Z^ against the exact Kalman log-likelihood.
    config.num_steps = 50
    config.particle_counts = (100, 1000, 10000)
    config.replicates = 20
    config.resample_threshold = 0.5
    config.x64 = True
    # Throughput of one `resample` call (N -> N ancestors), median of `repeats` timed calls
    # after one compile; blackjax's resamplers side by side on the same weights.
    config.resample_sizes = (100, 1000, 10000, 100000, 1000000)
    config.repeats = 11
    # Up to 1e3 particles a call takes ~10-100 us, where one scheduler hiccup moves a median
    # of 11: those sizes take `small_repeats` interleaved calls instead.
    config.small_repeats = 300
    config.small_max_n = 1000
    config.peer = True
    # Also time ours with the paths GPUs and TPUs take (on CPU: the sequential loops off).
    config.baseline = True
    config.methods = ("systematic", "stratified", "multinomial", "residual")
    config.seed = 0
    config.output_dir = "outputs/smc_kalman"
    return config
