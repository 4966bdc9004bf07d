"""Flags, ports, signals: the ``tensorflow_model_server`` command line."""

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from .config_files import parse_channel_arguments, read_batching_parameters, read_monitoring_config
from .grpc_api import ModelServicer, PredictionServicer
from .limits import Limits
from .model import ServedModel, log
from .rest_server import BoundedHTTPServer, make_rest_handler


def parse_args(argv=None):
    name = os.environ.get("MODEL_NAME", "model")
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8500, help="gRPC port")
    parser.add_argument("--rest_api_port", type=int, default=8501, help="REST port (0 disables REST)")
    parser.add_argument("--host", default="0.0.0.0", help="bind address for both ports")
    parser.add_argument("--model_name", default=name)
    parser.add_argument("--model_base_path", default=os.path.join(os.environ.get("MODEL_BASE_PATH", "/models"), name))
    parser.add_argument(
        "--max_num_load_retries",
        type=int,
        default=0,
        help="retries of a failed load, LOADING meanwhile (the real server's default is 5)",
    )
    parser.add_argument("--load_retry_interval_micros", type=int, default=60_000_000, help="wait between load retries")
    parser.add_argument(
        "--grpc_channel_arguments",
        default="",
        help="gRPC server channel arguments: key=value,... (e.g. grpc.max_connection_age_ms=30000)",
    )
    parser.add_argument("--monitoring_config_file", default="", help="MonitoringConfig text proto (Prometheus)")
    parser.add_argument("--enable_batching", type=_flag, nargs="?", const=True, default=False)
    parser.add_argument("--batching_parameters_file", default="", help="BatchingParameters text proto")
    defaults = Limits()
    for name, text in [
        ("max_message_bytes", "largest gRPC message, both ways (this server only; limits.py)"),
        ("rest_api_max_body_bytes", "largest REST request body (this server only; limits.py)"),
        ("max_request_batch_size", "most rows per Predict input (this server only; limits.py)"),
        ("grpc_max_threads", "threads serving gRPC calls"),
        ("rest_api_num_threads", "threads serving REST connections"),
        ("rest_api_timeout_in_ms", "time a REST client has to send its request, and again to take the answer"),
    ]:
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name), help=text)
    args, ignored = parser.parse_known_args(argv)
    args.ignored = ignored
    return args


def _flag(value):
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def limits_of(args):
    """The Limits the flags set; ValueError when one is not a whole number >= 1."""
    return Limits(**{name: getattr(args, name) for name in vars(Limits())})


def read_config_files(args):
    """(channel arguments, metrics path, batching parameters) from the flags; ValueError or
    OSError when one is unreadable: the real server does not start then either."""
    channel_arguments = parse_channel_arguments(args.grpc_channel_arguments)
    metrics_path = read_monitoring_config(args.monitoring_config_file) if args.monitoring_config_file else None
    batching = None
    if args.enable_batching:
        batching = read_batching_parameters(args.batching_parameters_file) if args.batching_parameters_file else {}
    return channel_arguments, metrics_path, batching


def start_servers(model, host, port, rest_api_port, *, channel_arguments=(), metrics_path=None, limits=None):
    """Open the gRPC port and (unless 0) the REST port for `model`, within `limits` (limits.py);
    returns both servers."""
    limits = limits or Limits()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.grpc_max_threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            *channel_arguments,
        ],
        maximum_concurrent_rpcs=limits.grpc_max_concurrent_rpcs,
    )
    servicer = PredictionServicer(model, limits.max_message_bytes)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(model), server)
    if server.add_insecure_port(f"{host}:{port}") == 0:  # older grpcio returns 0, newer raise
        raise RuntimeError(f"cannot bind gRPC port {host}:{port}")
    server.start()
    log.info("Running gRPC ModelServer at %s:%d ...", host, port)
    httpd = None
    if rest_api_port:
        handler = make_rest_handler(model, metrics_path, limits)
        httpd = BoundedHTTPServer(
            (host, rest_api_port), handler, workers=limits.rest_api_num_threads, wait_s=limits.rest_timeout_s
        )
        threading.Thread(target=httpd.serve_forever, name="rest", daemon=True).start()
        log.info("Exporting HTTP/REST API at:%s:%d ...", host, rest_api_port)
    return server, httpd


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def exit_now(signum, _frame):  # no drain, like the real server
        log.info("received signal %d, exiting", signum)
        os._exit(0)

    signal.signal(signal.SIGTERM, exit_now)
    signal.signal(signal.SIGINT, exit_now)
    if args.ignored:
        log.warning("ignoring unsupported flags: %s", " ".join(args.ignored))
    try:
        channel_arguments, metrics_path, batching = read_config_files(args)
        limits = limits_of(args)
    except (ValueError, OSError) as e:
        log.error("%s", e)
        return 1
    if batching is not None:  # requests run one by one here; the flags are checked, then accepted
        log.info("batching parameters (accepted, requests are not batched): %s", batching)
    if metrics_path:
        log.info("Prometheus metrics at :%d%s", args.rest_api_port, metrics_path)
    model = ServedModel(args.model_name, args.model_base_path, limits.max_request_batch_size)
    try:
        server, _ = start_servers(
            model,
            args.host,
            args.port,
            args.rest_api_port,
            channel_arguments=channel_arguments,
            metrics_path=metrics_path,
            limits=limits,
        )
    except (RuntimeError, OSError) as e:
        log.error("%s", e)
        return 1
    retries = (args.max_num_load_retries, args.load_retry_interval_micros / 1e6)
    threading.Thread(target=model.load, args=retries, name="loader", daemon=True).start()  # ports are open
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
