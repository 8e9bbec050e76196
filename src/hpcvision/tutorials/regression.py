"""Regression three ways: least squares, gradient descent and a one-unit Keras model.

Lesson 2 of the course ("Statistics review"). We draw noisy points from y = m*x + b and recover m and
b three ways that must agree:

1. the least-squares normal equations, solved in closed form;
2. plain gradient descent on the mean squared error, with the gradient written out by hand;
3. a Keras model with one Dense unit, trained with `model.fit`.

Then the same gradient-descent loop (now with `tf.GradientTape` doing the derivatives) fits the
parameterised families of the slides: quadratic, polynomial, exponential and logistic.

Run:
    hpcvision tutorial regression --out /tmp/regression
    python -m hpcvision.tutorials.regression --out /tmp/regression

Writes linear_fit.png, loss_curves.png, nonlinear_fits.png and results.json (lstsq_m, lstsq_b, gd_m,
gd_b, keras_m, keras_b, true_m, true_b, the losses and each nonlinear fit's parameters).
"""

from __future__ import annotations

import numpy as np

from hpcvision.config import bounded
from hpcvision.tutorials._common import output_dir, parser_for, pyplot, run_script, save_figure, write_results

"""
## The data

x is spread over [-5, 5]; y = m*x + b plus Gaussian noise. A fixed seed makes every run the same.
"""


def make_linear_data(n: int, m: float, b: float, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n points of y = m*x + b + N(0, noise^2), x uniform on [-5, 5]."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5.0, 5.0, n)
    return x, m * x + b + rng.normal(0.0, noise, n)


def mse(x: np.ndarray, y: np.ndarray, m: float, b: float) -> float:
    """Mean squared error of the line y = m*x + b: the E(m, b) of the slides, divided by n."""
    return float(np.mean((y - (m * x + b)) ** 2))


"""
## 1. Least squares in closed form

Setting dE/dm = 0 and dE/db = 0 gives a 2x2 linear system (the normal equations):

    [sum x^2  sum x] [m]   [sum x*y]
    [sum x    n    ] [b] = [sum y  ]
"""


def least_squares_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Solve the normal equations for (m, b)."""
    a = np.array([[np.sum(x * x), np.sum(x)], [np.sum(x), len(x)]])
    rhs = np.array([np.sum(x * y), np.sum(y)])
    m, b = np.linalg.solve(a, rhs)
    return float(m), float(b)


"""
## 2. Gradient descent

The gradient of the mean squared error L = mean((m*x + b - y)^2) is

    dL/dm = 2 * mean((m*x + b - y) * x),   dL/db = 2 * mean(m*x + b - y)

and each step moves (m, b) a little against it. The step size must stay below 2 / (largest
curvature), here about 2 / (2 * mean(x^2)) ~ 0.12, or the iteration diverges.
"""


def gradient_descent_line(
    x: np.ndarray, y: np.ndarray, learning_rate: float, steps: int
) -> tuple[float, float, list[float]]:
    """Fit (m, b) by plain gradient descent from (0, 0); returns m, b and the loss after each step."""
    m, b = 0.0, 0.0
    losses = []
    for _ in range(steps):
        residual = m * x + b - y
        m -= learning_rate * 2.0 * np.mean(residual * x)
        b -= learning_rate * 2.0 * np.mean(residual)
        losses.append(mse(x, y, m, b))
    return m, b, losses


"""
## 3. A one-unit Keras model

A `Dense(1)` layer computes exactly w*x + b, so training it on the squared error is the same
regression; Keras does the gradients and the mini-batches.
"""


def keras_line(x: np.ndarray, y: np.ndarray, epochs: int, seed: int) -> tuple[float, float, list[float]]:
    """Fit a one-unit Dense model with SGD; returns m, b and the loss per epoch."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(shape=(1,)), keras.layers.Dense(1, name="line")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.02), loss="mse")
    history = model.fit(x[:, None], y, batch_size=128, epochs=epochs, verbose=0)
    kernel, bias = model.get_layer("line").get_weights()
    return float(kernel[0, 0]), float(bias[0]), [float(v) for v in history.history["loss"]]


"""
## 4. Beyond straight lines

The slides' families, each a function of x with a few parameters. With `tf.GradientTape` we no
longer derive gradients by hand: we write the model, the loss, and let TensorFlow differentiate.
x lies in [-1, 1] here, so small fixed steps work for every family.
"""

FAMILIES = {
    # name: (model(x, p), true parameters, starting guess, learning rate)
    "quadratic": (lambda x, p: p[0] * x**2 + p[1] * x + p[2], [1.5, -0.8, 0.3], [0.0, 0.0, 0.0], 0.05),
    "polynomial": (
        lambda x, p: p[0] + p[1] * x + p[2] * x**2 + p[3] * x**3,
        [0.5, -1.0, 0.7, 2.0],
        [0.0, 0.0, 0.0, 0.0],
        0.05,
    ),
    "exponential": (lambda x, p: p[0] * np.e ** (p[1] * x), [1.2, 0.9], [1.0, 0.0], 0.05),
    # The logistic curve is flat away from its middle, so its gradients are small: a larger step.
    "logistic": (lambda x, p: 1.0 / (1.0 + np.e ** (-p[0] * (x - p[1]))), [6.0, 0.2], [1.0, 0.0], 0.2),
}


def fit_family(model, x: np.ndarray, y: np.ndarray, start: list[float], learning_rate: float, steps: int):
    """Minimise mean((model(x, p) - y)^2) over p by gradient descent (momentum 0.9) with GradientTape."""
    import tensorflow as tf

    params = tf.Variable(np.asarray(start, dtype=np.float64))
    xs, ys = tf.constant(x), tf.constant(y)
    velocity = tf.Variable(tf.zeros_like(params))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(xs, params) - ys) ** 2)
        velocity.assign(0.9 * velocity - learning_rate * tape.gradient(loss, params))
        params.assign_add(velocity)
        return loss

    losses = [float(step()) for _ in range(steps)]
    return params.numpy().tolist(), losses


"""
## Run it all
"""


def main(
    out_dir=None, *, n: int = 2000, true_m: float = 0.3, true_b: float = -3.0, noise: float = 0.1,
    steps: int = 400, learning_rate: float = 0.05, keras_epochs: int = 20, fit_steps: int = 1500,
    seed: int = 0,
) -> dict:
    """Run the lesson; write figures and results.json under out_dir; return the results."""
    out = output_dir(out_dir, "regression")
    x, y = make_linear_data(n, true_m, true_b, noise, seed)

    lstsq_m, lstsq_b = least_squares_line(x, y)
    gd_m, gd_b, gd_losses = gradient_descent_line(x, y, learning_rate, steps)
    keras_m, keras_b, keras_losses = keras_line(x, y, keras_epochs, seed)
    print(f"true          m = {true_m:+.5f}  b = {true_b:+.5f}")
    print(f"least squares m = {lstsq_m:+.5f}  b = {lstsq_b:+.5f}  loss {mse(x, y, lstsq_m, lstsq_b):.6f}")
    print(f"grad. descent m = {gd_m:+.5f}  b = {gd_b:+.5f}  loss {gd_losses[-1]:.6f} after {steps} steps")
    print(f"keras Dense   m = {keras_m:+.5f}  b = {keras_b:+.5f}  loss {keras_losses[-1]:.6f}")

    rng = np.random.default_rng(seed + 1)
    nonlinear = {}
    for name, (model, true_params, start, rate) in FAMILIES.items():
        xs = rng.uniform(-1.0, 1.0, 400)
        ys = model(xs, np.array(true_params)) + rng.normal(0.0, 0.05, xs.shape)
        params, losses = fit_family(model, xs, ys, start, learning_rate=rate, steps=fit_steps)
        nonlinear[name] = {"true": true_params, "fit": params, "loss": losses[-1], "x": xs, "y": ys}
        print(f"{name:<12} true {np.round(true_params, 3).tolist()}  fit {np.round(params, 3).tolist()}")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(x, y, s=3, alpha=0.4, label="data")
    grid = np.linspace(-5, 5, 2)
    ax.plot(grid, lstsq_m * grid + lstsq_b, lw=3, label=f"least squares m={lstsq_m:.3f} b={lstsq_b:.3f}")
    ax.plot(grid, gd_m * grid + gd_b, "--", lw=2, label=f"gradient descent m={gd_m:.3f} b={gd_b:.3f}")
    ax.plot(grid, keras_m * grid + keras_b, ":", lw=2, label=f"Keras Dense(1) m={keras_m:.3f} b={keras_b:.3f}")
    ax.set(xlabel="x", ylabel="y", title="y = m x + b, three ways")
    ax.legend()
    save_figure(fig, out / "linear_fit.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.semilogy(np.array(gd_losses) - mse(x, y, lstsq_m, lstsq_b) + 1e-16)
    left.set(xlabel="step", ylabel="loss - least-squares loss", title="gradient descent")
    right.plot(range(1, len(keras_losses) + 1), keras_losses, "o-")
    right.set(xlabel="epoch", ylabel="mean squared error", title="Keras Dense(1)")
    save_figure(fig, out / "loss_curves.png")

    fig, axes = plt.subplots(1, len(nonlinear), figsize=(4 * len(nonlinear), 3.5))
    for ax, (name, fit) in zip(axes, nonlinear.items(), strict=True):
        model = FAMILIES[name][0]
        grid = np.linspace(-1, 1, 200)
        ax.scatter(fit["x"], fit["y"], s=3, alpha=0.4)
        ax.plot(grid, model(grid, np.array(fit["fit"])), "r", lw=2)
        ax.set(title=name, xlabel="x")
    save_figure(fig, out / "nonlinear_fits.png")

    results = {
        "true_m": true_m, "true_b": true_b, "n": n, "noise": noise, "seed": seed,
        "lstsq_m": lstsq_m, "lstsq_b": lstsq_b, "lstsq_loss": mse(x, y, lstsq_m, lstsq_b),
        "gd_m": gd_m, "gd_b": gd_b, "gd_loss": gd_losses[-1], "gd_steps": steps, "gd_losses": gd_losses,
        "keras_m": keras_m, "keras_b": keras_b, "keras_losses": keras_losses,
        "nonlinear": {k: {f: v[f] for f in ("true", "fit", "loss")} for k, v in nonlinear.items()},
    }
    write_results(out, results)
    return results


def build_parser():
    """Command line of this tutorial."""
    parser = parser_for(__doc__, "regression")
    parser.add_argument("--n", type=bounded(int, minimum=2), default=2000, help="number of data points")
    parser.add_argument("--steps", type=bounded(int, minimum=1), default=400, help="gradient-descent steps for the line")
    parser.add_argument("--keras-epochs", type=bounded(int, minimum=1), default=20, help="epochs for the Keras model")
    parser.add_argument("--fit-steps", type=bounded(int, minimum=1), default=1500, help="steps for each nonlinear fit")
    parser.add_argument("--seed", type=bounded(int, minimum=0), default=0)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_script(main, build_parser()))
