"""TensorFlow basics: operations, name scopes, devices, a traced graph and TensorBoard.

Lesson 1 of the course. In 2018 the workflow was: construct operations, assign them to a name scope
and/or a device, enter a Session and `run()`. In TensorFlow 2 operations run eagerly, one by one,
and `tf.function` traces a Python function into a graph - today's equivalent of building the graph
and running it in a Session. We build a small computation (the line y = m*x + b and its squared error)
both ways, group it with `tf.name_scope`, pin it to a device with `tf.device`, and write the traced
graph for TensorBoard.

Run:
    hpcvision tutorial basics --out /tmp/basics
    tensorboard --logdir /tmp/basics/logs      # the "Graphs" tab shows the traced function

Writes graph.png (the traced graph's operations, by name scope), logs/ (TensorBoard) and results.json.
"""

from __future__ import annotations

import numpy as np

from hpcvision.tutorials._common import output_dir, parser_for, pyplot, run_script, save_figure, write_results

"""
## Operations run eagerly

Every TensorFlow operation returns a `tf.Tensor` with a value right away, like NumPy.
"""


def eager_demo():
    """A few operations executed one by one; returns their values."""
    import tensorflow as tf

    a = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    b = tf.constant([[0.5], [-1.0]])
    product = tf.matmul(a, b)  # runs now; the result is already a value
    total = tf.reduce_sum(product)
    return {"matmul": product.numpy().ravel().tolist(), "sum": float(total)}


"""
## Name scopes and devices

`tf.name_scope` prefixes the names of the operations created inside it (TensorBoard folds each scope
into one box). `tf.device` says where they run: "/CPU:0", "/GPU:0", or a task in a cluster such as
"/job:ps/task:0". We pick the first GPU if there is one, else the CPU.
"""


def pick_device() -> str:
    """'/GPU:0' when TensorFlow sees a GPU, else '/CPU:0'."""
    import tensorflow as tf

    return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"


"""
## Tracing a graph with tf.function

Calling a `tf.function` the first time traces the Python code into a graph of operations; later calls
with the same input signature run the graph. The graph is what a Session used to run.
"""


def make_line_loss(device: str):
    """A tf.function computing y = m*x + b and its mean squared error, in name scopes, on `device`."""
    import tensorflow as tf

    @tf.function
    def line_loss(x, y_true, m, b):
        with tf.device(device):
            with tf.name_scope("model"):
                y = tf.add(tf.multiply(m, x, name="m_times_x"), b, name="y")
            with tf.name_scope("loss"):
                residual = tf.subtract(y, y_true, name="residual")
                loss = tf.reduce_mean(tf.square(residual, name="squared"), name="mean")
        return y, loss

    return line_loss


def graph_operations(concrete_function) -> list[dict]:
    """Name, type, device and inputs of every operation in a traced graph."""
    return [
        {
            "name": op.name,
            "type": op.type,
            "device": op.device,
            "inputs": [t.op.name for t in op.inputs],
        }
        for op in concrete_function.graph.get_operations()
    ]


def write_graph_to_tensorboard(function, args, log_dir: str) -> None:
    """Trace `function(*args)` with the summary tracer on, so TensorBoard's Graphs tab shows it."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(log_dir)
    tf.summary.trace_on(graph=True)
    function(*args)
    with writer.as_default():
        tf.summary.trace_export(name="line_loss", step=0)
    writer.flush()


"""
## Drawing the graph

Operations are placed left to right by their depth (longest path from an input) and coloured by name
scope - a small stand-in for TensorBoard's graph view.
"""


def plot_graph(operations: list[dict], path) -> None:
    """Draw the operations as boxes, edges from inputs to consumers, coloured by top-level scope."""
    depth: dict[str, int] = {}
    for op in operations:  # graph operations come in topological order
        depth[op["name"]] = 1 + max((depth.get(i, 0) for i in op["inputs"]), default=-1)
    rows: dict[int, int] = {}
    position = {}
    for op in operations:
        d = depth[op["name"]]
        position[op["name"]] = (d, rows.get(d, 0))
        rows[d] = rows.get(d, 0) + 1
    scopes = sorted({op["name"].split("/")[0] if "/" in op["name"] else "(inputs)" for op in operations})
    plt = pyplot()
    colours = dict(zip(scopes, plt.cm.tab10.colors, strict=False))
    fig, ax = plt.subplots(figsize=(2.4 * (max(depth.values()) + 1), 1.2 * (max(rows.values()) + 1)))
    for op in operations:
        x1, y1 = position[op["name"]]
        for source in op["inputs"]:
            x0, y0 = position[source]
            ax.annotate("", (x1, -y1), (x0, -y0), arrowprops={"arrowstyle": "->", "color": "gray"})
    for op in operations:
        x, y = position[op["name"]]
        scope = op["name"].split("/")[0] if "/" in op["name"] else "(inputs)"
        ax.text(x, -y, f"{op['name']}\n{op['type']}", ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round", "fc": colours[scope], "alpha": 0.5})
    ax.set_xlim(-0.7, max(depth.values()) + 0.7)
    ax.set_ylim(-max(rows.values()) - 0.3, 0.7)
    ax.axis("off")
    ax.set_title("tf.function graph of line_loss (colour = name scope)")
    save_figure(fig, path)


def main(out_dir=None) -> dict:
    """Run the lesson; write graph.png, TensorBoard logs and results.json; return the results."""
    import tensorflow as tf

    out = output_dir(out_dir, "basics")
    eager = eager_demo()
    print(f"eager: matmul -> {eager['matmul']}, sum -> {eager['sum']}")

    device = pick_device()
    line_loss = make_line_loss(device)
    x = tf.constant(np.linspace(-1.0, 1.0, 5), dtype=tf.float32)
    y_true = 0.3 * x - 3.0
    m, b = tf.constant(0.5), tf.constant(-2.0)

    y, loss = line_loss(x, y_true, m, b)  # first call: trace, then run the graph
    concrete = line_loss.get_concrete_function(x, y_true, m, b)
    operations = graph_operations(concrete)
    print(f"graph of line_loss on {device}: {len(operations)} operations")
    for op in operations:
        print(f"  {op['name']:<22} {op['type']:<10} device={op['device'] or '(default)'}")
    print(f"y = {y.numpy().round(3).tolist()}  loss = {float(loss):.6f}")

    write_graph_to_tensorboard(make_line_loss(device), (x, y_true, m, b), str(out / "logs"))
    print(f"TensorBoard graph in {out / 'logs'}: tensorboard --logdir {out / 'logs'}")
    plot_graph(operations, out / "graph.png")

    results = {
        "eager": eager,
        "device": device,
        "x": x.numpy(),
        "y": y.numpy(),
        "loss": float(loss),
        "m": float(m),
        "b": float(b),
        "operations": operations,
        "log_dir": str(out / "logs"),
    }
    write_results(out, results)
    return results


def build_parser():
    """Command line of this tutorial."""
    return parser_for(__doc__, "basics")


if __name__ == "__main__":
    raise SystemExit(run_script(main, build_parser()))
