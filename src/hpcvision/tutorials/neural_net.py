"""Neural networks by hand: activation functions, backpropagation as the chain rule, GradientTape.

Lesson 3 of the course. The slides' network has one hidden layer of M units (Hastie, Tibshirani and
Friedman, "The Elements of Statistical Learning", section 11.3):

    Z_m = sigma(alpha_0m + alpha_m . X)      hidden units, sigma = logistic
    T_k = beta_0k + beta_k . Z               output units
    f_k(X) = g_k(T)                          g = identity (regression) or softmax (classes)

We plot the activation functions, write backpropagation out with the chain rule in NumPy, check it
against TensorFlow's automatic differentiation (`tf.GradientTape`), and then train the network with
our own gradients to fit a nonlinear target.

Run:
    hpcvision tutorial neural-net --out /tmp/neural-net

Writes activations.png, training.png and results.json (largest gradient difference to GradientTape
for each output function, loss before and after training).
"""

from __future__ import annotations

import numpy as np

from hpcvision.config import bounded
from hpcvision.tutorials._common import output_dir, parser_for, pyplot, run_script, save_figure, write_results

"""
## Activation functions
"""


def logistic(z):
    """sigma(z) = 1 / (1 + e^-z)."""
    return 1.0 / (1.0 + np.exp(-z))


def relu(z):
    """max(0, z): the rectified linear unit."""
    return np.maximum(z, 0.0)


def softmax(t):
    """e^t_k / sum_j e^t_j along the last axis (shifted by the max so exp never overflows)."""
    e = np.exp(t - t.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def plot_activations(path) -> None:
    """Softmax (of three inputs, one varying), logistic, arctan and ReLU side by side."""
    z = np.linspace(-5, 5, 401)
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    three = softmax(np.stack([z, np.full_like(z, 1.0), np.full_like(z, -1.0)], axis=-1))
    for k, label in enumerate(["t1 = z", "t2 = 1", "t3 = -1"]):
        axes[0].plot(z, three[:, k], label=f"softmax_{k + 1} ({label})")
    axes[0].legend(fontsize=7)
    axes[0].set_title("softmax(z, 1, -1)")
    for ax, (name, f) in zip(axes[1:], [("logistic", logistic), ("arctan", np.arctan), ("ReLU", relu)],
                             strict=True):
        ax.plot(z, f(z))
        ax.set_title(name)
    for ax in axes:
        ax.axhline(0, color="gray", lw=0.5)
        ax.axvline(0, color="gray", lw=0.5)
        ax.set_xlabel("z")
    save_figure(fig, path)


"""
## The network and its loss

Weights: alpha (P x M) and alpha0 (M), beta (M x K) and beta0 (K). The loss R is the mean over the
n samples of the squared error (identity output) or of the cross-entropy (softmax output).
"""


def init_weights(inputs: int, hidden: int, outputs: int, seed: int) -> dict[str, np.ndarray]:
    """Small random weights (float64 so the gradient comparison is exact to ~1e-12)."""
    rng = np.random.default_rng(seed)
    return {
        "alpha": rng.normal(0.0, 1.0, (inputs, hidden)),
        "alpha0": rng.normal(0.0, 1.0, hidden),
        "beta": rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, outputs)),
        "beta0": np.zeros(outputs),
    }


def forward(w: dict, x: np.ndarray, output: str):
    """The network's values layer by layer: pre-activations A, hidden Z, outputs T and f."""
    a = x @ w["alpha"] + w["alpha0"]
    z = logistic(a)
    t = z @ w["beta"] + w["beta0"]
    f = softmax(t) if output == "softmax" else t
    return a, z, t, f


def loss(f: np.ndarray, y: np.ndarray, output: str) -> float:
    """Mean squared error, or mean cross-entropy against one-hot targets for softmax."""
    if output == "softmax":
        return float(-np.mean(np.sum(y * np.log(f), axis=1)))
    return float(np.mean(np.sum((f - y) ** 2, axis=1)))


"""
## Backpropagation: the chain rule, one layer at a time

Going backwards from the loss:

    dR/dT     = 2 (f - y) / n           (squared error, identity g)
              = (softmax(T) - y) / n    (cross-entropy, softmax g: the two derivatives combine)
    dR/dbeta  = Z^T dR/dT,              dR/dbeta0  = sum over samples of dR/dT
    dR/dZ     = dR/dT beta^T
    dR/dA     = dR/dZ * sigma(A) (1 - sigma(A))       since sigma' = sigma (1 - sigma)
    dR/dalpha = X^T dR/dA,              dR/dalpha0 = sum over samples of dR/dA
"""


def backprop(w: dict, x: np.ndarray, y: np.ndarray, output: str) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and its gradient with respect to every weight, by the chain rule written out."""
    n = x.shape[0]
    _, z, _, f = forward(w, x, output)
    d_t = (f - y) / n if output == "softmax" else 2.0 * (f - y) / n
    d_z = d_t @ w["beta"].T
    d_a = d_z * z * (1.0 - z)
    grads = {
        "beta": z.T @ d_t,
        "beta0": d_t.sum(axis=0),
        "alpha": x.T @ d_a,
        "alpha0": d_a.sum(axis=0),
    }
    return loss(f, y, output), grads


"""
## The same gradients from tf.GradientTape

TensorFlow records the forward pass and differentiates it for us. If our chain rule is right the two
agree to rounding error.
"""


def tape_gradients(w: dict, x: np.ndarray, y: np.ndarray, output: str) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients of the same network computed by tf.GradientTape (float64)."""
    import tensorflow as tf

    variables = {k: tf.Variable(v) for k, v in w.items()}
    with tf.GradientTape() as tape:
        z = tf.sigmoid(x @ variables["alpha"] + variables["alpha0"])
        t = z @ variables["beta"] + variables["beta0"]
        if output == "softmax":
            value = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=t))
        else:
            value = tf.reduce_mean(tf.reduce_sum((t - y) ** 2, axis=1))
    grads = tape.gradient(value, variables)
    return float(value), {k: g.numpy() for k, g in grads.items()}


def max_gradient_difference(w: dict, x: np.ndarray, y: np.ndarray, output: str) -> float:
    """Largest absolute difference between hand-written and GradientTape gradients."""
    _, hand = backprop(w, x, y, output)
    _, auto = tape_gradients(w, x, y, output)
    return max(float(np.max(np.abs(hand[k] - auto[k]))) for k in hand)


"""
## Training with our own gradients

Gradient descent: w <- w - learning_rate * dR/dw, on the nonlinear target y = sin(2x) + x/2.
"""


def nonlinear_target(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n samples of y = sin(2x) + x/2 + small noise, x uniform on [-2, 2]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2.0, 2.0, (n, 1))
    return x, np.sin(2.0 * x) + 0.5 * x + rng.normal(0.0, 0.05, x.shape)


def train(w: dict, x: np.ndarray, y: np.ndarray, learning_rate: float, steps: int) -> list[float]:
    """Full-batch gradient descent with momentum 0.9 using `backprop`; returns the loss per step."""
    velocity = {k: np.zeros_like(v) for k, v in w.items()}
    losses = []
    for _ in range(steps):
        value, grads = backprop(w, x, y, "identity")
        for k in w:
            velocity[k] = 0.9 * velocity[k] - learning_rate * grads[k]
            w[k] += velocity[k]
        losses.append(value)
    return losses


def main(out_dir=None, *, hidden: int = 16, steps: int = 4000, learning_rate: float = 0.05, seed: int = 0) -> dict:
    """Run the lesson; write activations.png, training.png and results.json; return the results."""
    out = output_dir(out_dir, "neural-net")
    plot_activations(out / "activations.png")

    # Gradient check on random data: 3 inputs, `hidden` units, 4 outputs, both output functions.
    rng = np.random.default_rng(seed + 1)
    x_check = rng.normal(size=(32, 3))
    w_check = init_weights(3, hidden, 4, seed)
    differences = {}
    for output in ("identity", "softmax"):
        y_check = np.eye(4)[rng.integers(0, 4, 32)] if output == "softmax" else rng.normal(size=(32, 4))
        differences[output] = max_gradient_difference(w_check, x_check, y_check, output)
        print(f"{output:>8} output: max |hand gradient - GradientTape gradient| = {differences[output]:.2e}")

    x, y = nonlinear_target(256, seed)
    w = init_weights(1, hidden, 1, seed)
    losses = train(w, x, y, learning_rate, steps)
    print(f"training on y = sin(2x) + x/2: loss {losses[0]:.4f} -> {losses[-1]:.4f} after {steps} steps")

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    grid = np.linspace(-2, 2, 300)[:, None]
    left.scatter(x[:, 0], y[:, 0], s=4, alpha=0.5, label="data")
    left.plot(grid[:, 0], forward(w, grid, "identity")[3][:, 0], "r", lw=2, label=f"network, {hidden} hidden units")
    left.plot(grid[:, 0], np.sin(2 * grid[:, 0]) + 0.5 * grid[:, 0], "k:", label="target")
    left.legend()
    left.set(xlabel="x", ylabel="y", title="fit")
    right.semilogy(losses)
    right.set(xlabel="step", ylabel="mean squared error", title="training loss (hand-written gradients)")
    save_figure(fig, out / "training.png")

    results = {
        "grad_max_abs_diff": differences,
        "hidden": hidden,
        "steps": steps,
        "learning_rate": learning_rate,
        "initial_loss": losses[0],
        "final_loss": losses[-1],
        "target_noise_variance": 0.05**2,
    }
    write_results(out, results)
    return results


def build_parser():
    """Command line of this tutorial."""
    parser = parser_for(__doc__, "neural-net")
    parser.add_argument("--hidden", type=bounded(int, minimum=1), default=16, help="hidden units M")
    parser.add_argument("--steps", type=bounded(int, minimum=1), default=4000, help="gradient-descent steps")
    parser.add_argument("--learning-rate", type=bounded(float, above=0), default=0.05)
    parser.add_argument("--seed", type=bounded(int, minimum=0), default=0)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_script(main, build_parser()))
