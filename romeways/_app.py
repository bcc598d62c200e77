"""The application object: its registry of consumers and connectors, and start/stop."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, Protocol, cast, overload

from typing_extensions import TypeIs, TypeVar

from ._batch import AsyncBatchHandlerT, BatchConsumerDecorator
from ._config import GenericConnectorConfig, GenericQueueConfig
from ._connector import (
    ConnectorConfigT,
    ConnectorFactory,
    QueueConfigT,
    config_types,
    in_process_only,
    missing_methods,
    takes_queue_name,
)
from ._context import State
from ._dead_letters import DeadLetterQueue, check_target
from ._errors import ConfigError, RegistrationError, RomewaysError
from ._message import Message, PayloadT
from ._middleware import Middleware
from ._publish import PublishHook, QueueHandle, close_publishers, handle_for_handler
from ._route import DeadLetterTarget, Route, check_arguments, describe, make_route
from ._runner import Supervisor, install_stop_signals, run_hook, serve

if TYPE_CHECKING:
    from typing_extensions import TypeForm

    from ._telemetry import Telemetry

logger = logging.getLogger("romeways")

Hook = Callable[[], Awaitable[object]]


class AsyncHandler(Protocol):
    """What ``queue_consumer`` registers: an ``async def handler(message: Message[T])`` with one
    required positional parameter, the message (more parameters must have defaults)."""

    def __call__(self, message: Message[Any], /) -> Awaitable[object]: ...


# The default keeps a misuse to one error in pyright: without it, the failed call's result is
# unknown and pyright also reports the decorator as untyped.
AsyncHandlerT = TypeVar("AsyncHandlerT", bound=AsyncHandler, default=AsyncHandler)
StateT = TypeVar("StateT", default=Any)


_NO_STATE: Any = object()  # App() without state=: a State namespace


class QueueConsumerDecorator(Protocol):
    """What ``queue_consumer(...)`` returns: registers an ``AsyncHandler`` and gives it back
    with its type unchanged."""

    def __call__(self, handler: AsyncHandlerT, /) -> AsyncHandlerT: ...


class ConnectorRegistration(NamedTuple):
    """A registered connector: its class, its config and where it runs."""

    connector: ConnectorFactory[Any, Any]
    config: GenericConnectorConfig
    spawn_process: bool


class App(Generic[StateT]):
    """A set of queue consumers and the connectors they run on.

    ``shutdown_timeout`` (seconds) bounds how long in-flight handlers may finish on shutdown;
    a worker process that crashes more than ``max_restarts`` times within ``restart_window``
    seconds makes ``start()`` fail instead of restarting it again; the start-up hooks must
    finish within ``startup_timeout`` seconds together (None: no bound). ``state`` is ``app.state``:
    an object of yours (``App(state=AppState())`` is an ``App[AppState]``, typed), or else a
    ``State`` namespace.
    """

    @overload
    def __init__(
        self: App[State],
        *,
        shutdown_timeout: float = 10.0,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        startup_timeout: float | None = 60.0,
    ) -> None: ...

    @overload
    def __init__(
        self,
        *,
        state: StateT,
        shutdown_timeout: float = 10.0,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        startup_timeout: float | None = 60.0,
    ) -> None: ...

    def __init__(
        self,
        *,
        state: object = _NO_STATE,
        shutdown_timeout: float = 10.0,
        max_restarts: int = 5,
        restart_window: float = 60.0,
        startup_timeout: float | None = 60.0,
    ) -> None:
        for name, seconds in (
            ("shutdown_timeout", shutdown_timeout),
            ("restart_window", restart_window),
        ):
            if not _positive_seconds(seconds):
                raise ConfigError(f"App({name}={seconds!r}): give a finite number of seconds > 0")
        given = cast(object, max_restarts)  # untyped callers
        if not isinstance(given, int) or isinstance(given, bool) or given < 0:
            raise ConfigError(f"App(max_restarts={max_restarts!r}): give a count >= 0")
        if startup_timeout is not None and not _positive_seconds(startup_timeout):
            raise ConfigError(
                f"App(startup_timeout={startup_timeout!r}): give a finite number of seconds > 0, "
                "or None for no bound"
            )
        self.startup_timeout = startup_timeout
        self.shutdown_timeout = shutdown_timeout
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.routes: list[Route[Any]] = []
        self.connectors: dict[str, ConnectorRegistration] = {}
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []
        self._stopping: asyncio.Event | None = None
        self.state: StateT = cast("StateT", State() if state is _NO_STATE else state)
        self.middleware: list[Middleware] = []
        self.workers = 1  # processes per connector; more than 1 puts every connector in processes
        self.telemetry: Telemetry | None = None  # set by `romeways run --metrics/health-port`
        # The distinct publish handles made by queue_handle()/publisher(), for the AsyncAPI
        # document's send operations (one per queue, config and payload type, however many
        # times a handle is made).
        self.queue_handles: list[QueueHandle[Any]] = []
        self.publish_hook: PublishHook | None = None  # romeways.otel.instrument(app) sets it

    def queue_consumer(
        self,
        *,
        queue_name: str,
        config: GenericQueueConfig,
        dead_letter: DeadLetterTarget | None = None,
    ) -> QueueConsumerDecorator:
        """Register the decorated ``async def handler(message: Message[T])`` for one queue.

        The handler, its payload type and the config are checked now; ``dead_letter`` is an
        ``async def hook(letter: DeadLetter)`` called for each message the queue gives up on,
        or a ``DeadLetterQueue`` those messages are published to. ``queue_name``, ``config``
        and ``dead_letter`` are checked at this call, the handler when it is decorated."""
        check_arguments(
            where=f"@queue_consumer(queue_name={queue_name!r})",
            queue_name=queue_name,
            config=config,
            dead_letter=dead_letter,
        )

        def register(handler: AsyncHandlerT) -> AsyncHandlerT:
            self._register(queue_name, config, handler, dead_letter, batch=False)
            return handler

        return register

    def batch_consumer(
        self,
        *,
        queue_name: str,
        config: GenericQueueConfig,
        dead_letter: DeadLetterTarget | None = None,
    ) -> BatchConsumerDecorator:
        """Register the decorated ``async def handler(batch: Batch[T])`` for one queue: it gets
        each fetched chunk (up to ``max_chunk_size`` messages) at once, decoded. Checked as
        ``queue_consumer`` checks; see ``romeways.Batch`` for resending or dead-lettering
        single messages of the batch."""
        check_arguments(
            where=f"@batch_consumer(queue_name={queue_name!r})",
            queue_name=queue_name,
            config=config,
            dead_letter=dead_letter,
        )

        def register(handler: AsyncBatchHandlerT) -> AsyncBatchHandlerT:
            self._register(queue_name, config, handler, dead_letter, batch=True)
            return handler

        return register

    def _register(
        self,
        queue_name: str,
        config: GenericQueueConfig,
        handler: object,
        dead_letter: DeadLetterTarget | None,
        *,
        batch: bool,
    ) -> None:
        route = make_route(
            queue_name=queue_name,
            config=config,
            handler=handler,
            dead_letter=dead_letter,
            batch=batch,
        )
        source = route.config.consumes_from()
        for other in self.routes:
            if (other.connector_name, other.queue_name) == (
                route.connector_name,
                route.queue_name,
            ):
                raise RegistrationError(
                    f"queue {queue_name!r} of connector {route.connector_name!r} already has "
                    f"handler {other.handler_name}; {describe(handler)} cannot consume it too"
                )
            if source is not None and other.config.consumes_from() is source:
                raise RegistrationError(
                    f"{route.where()}: its config hands it the same {type(source).__name__} "
                    f"as queue {other.queue_name!r} (connector {other.connector_name!r}, "
                    f"handler {other.handler_name}), so the two would split its messages; "
                    "give each queue its own"
                )
        registered = self.connectors.get(route.connector_name)
        if registered is not None:
            _check_queue_config(registered, route)
        self.routes.append(route)

    def connector_register(
        self,
        *,
        connector: ConnectorFactory[ConnectorConfigT, QueueConfigT],
        config: ConnectorConfigT,
        spawn_process: bool = False,
    ) -> None:
        """Register a connector class under ``config.connector_name``.

        With ``spawn_process=True`` its queues are consumed in a supervised child process;
        otherwise as asyncio tasks in the loop that runs ``start()``."""
        if not isinstance(connector, type):
            raise RegistrationError(
                f"connector_register(connector={connector!r}): give the connector class itself"
            )
        name_of = connector.__name__
        where = f"connector_register(connector={name_of})"
        missing = missing_methods(connector)
        if missing:
            raise RegistrationError(
                f"{where}: {name_of} does not implement the connector protocol; "
                f"missing or not 'async def': {', '.join(missing)}"
            )
        if not isinstance(cast(object, config), GenericConnectorConfig):  # untyped callers
            raise RegistrationError(
                f"{where}: config is a {type(config).__name__}, but it must be a "
                "GenericConnectorConfig subclass"
            )
        connector_config_type, _ = config_types(connector)
        if not isinstance(config, connector_config_type):
            raise RegistrationError(
                f"{where}: config is a {type(config).__name__}, but {name_of} takes a "
                f"{connector_config_type.__name__}"
            )
        if not takes_queue_name(connector):
            raise RegistrationError(
                f"{where}: {name_of}(...) does not take queue_name, which romeways passes when it "
                "builds a connector; give its __init__ a keyword parameter "
                "'queue_name: str | None = None' and pass it on to AQueueConnector.__init__"
            )
        if spawn_process and in_process_only(connector):
            raise RegistrationError(
                f"{where}: {name_of} is in_process_only (its backend lives in this process), so "
                "a worker process would never see its messages; register it without "
                "spawn_process=True"
            )
        name = config.connector_name
        if name in self.connectors:
            raise RegistrationError(f"{where}: connector name {name!r} is already registered")
        registration = ConnectorRegistration(connector, config, bool(spawn_process))
        for route in self.routes:
            if route.connector_name == name:
                _check_queue_config(registration, route)
        self.connectors[name] = registration

    def on_startup(self, hook: Hook) -> Hook:
        """Run ``async def hook()`` in every worker process (and in-process) before consuming."""
        self.startup_hooks.append(hook)
        return hook

    def on_shutdown(self, hook: Hook) -> Hook:
        """Run ``async def hook()`` in every worker process after its consumers stopped."""
        self.shutdown_hooks.append(hook)
        return hook

    def add_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware`` around the handling of every message (the first added is the
        outermost); see ``romeways.Middleware``."""
        if not isinstance(cast(object, middleware), Middleware):  # untyped callers
            raise RegistrationError(
                f"add_middleware({middleware!r}): give an instance of a romeways.Middleware "
                "subclass"
            )
        self.middleware.append(middleware)

    def queue_handle(
        self,
        queue_name: str,
        payload_type: TypeForm[PayloadT],
        *,
        config: GenericQueueConfig | None = None,
    ) -> QueueHandle[PayloadT]:
        """A typed handle to publish ``payload_type`` payloads to ``queue_name``; ``config`` is
        needed unless this app consumes the queue (then its consumer's config is used).
        ``payload_type`` is any type expression msgspec decodes: ``Order``, ``list[int]``,
        ``Refund | Charge``."""
        return self._remember(
            QueueHandle(app=self, queue_name=queue_name, payload_type=payload_type, config=config)
        )

    def publisher(
        self, handler: Callable[[Message[PayloadT]], Awaitable[object]]
    ) -> QueueHandle[PayloadT]:
        """The typed handle of the queue ``handler`` (a registered consumer) consumes: its
        payload type is the handler's ``Message[T]``."""
        return self._remember(handle_for_handler(self, handler))

    def _remember(self, handle: QueueHandle[PayloadT]) -> QueueHandle[PayloadT]:
        """Record ``handle`` in ``queue_handles`` unless an equal one is there already."""
        for known in self.queue_handles:
            if known.same_target(handle):
                return handle
        self.queue_handles.append(handle)
        return handle

    async def close_publishers(self) -> None:
        """Close the connectors this app opened for publishing in the running event loop
        (``start()`` does it in each worker process on shutdown)."""
        await close_publishers(self)

    async def run_startup_hooks(self, stopping: asyncio.Event | None = None) -> bool:
        """Run the start-up hooks in order, together within ``startup_timeout`` seconds; one
        still running then is cancelled and RomewaysError names it. ``stopping`` set meanwhile
        cancels the running hook and skips the rest: False then (start-up did not complete)."""
        loop = asyncio.get_running_loop()
        bound = self.startup_timeout
        if bound is not None and not bound > 0:
            raise RomewaysError(f"App.startup_timeout={bound!r}: give seconds > 0, or None")
        deadline = None if bound is None else loop.time() + bound
        for hook in self.startup_hooks:
            if stopping is not None and stopping.is_set():
                logger.info(
                    "stop requested during start-up: start-up hook %s and those after it not "
                    "run; not consuming",
                    describe(hook),
                )
                return False
            end = await run_hook(hook, deadline=deadline, stopping=stopping)
            if end == "stopped":
                logger.warning(
                    "stop requested while start-up hook %s was running: cancelled it; "
                    "not consuming",
                    describe(hook),
                )
                return False
            if end == "timeout":
                raise RomewaysError(
                    f"start-up hook {describe(hook)} did not finish within "
                    f"App.startup_timeout={bound}s and was cancelled; make it finish sooner, or "
                    "raise app.startup_timeout (None: no bound)"
                )
        return True

    async def run_shutdown_hooks(self, timeout: float | None = None) -> None:
        """Run the shutdown hooks in reverse order, together within ``timeout`` seconds (default
        ``shutdown_timeout``): one still running then is cancelled and named in the log, and
        the ones after it are skipped. A hook that raises is logged; the others still run."""
        loop = asyncio.get_running_loop()
        budget = self.shutdown_timeout if timeout is None else timeout
        deadline = loop.time() + budget
        hooks = list(reversed(self.shutdown_hooks))
        for index, hook in enumerate(hooks):
            try:
                end = await run_hook(hook, deadline=deadline)
            except Exception as exc:
                logger.error(
                    "shutdown hook %s failed: %s: %s", describe(hook), type(exc).__name__, exc
                )
                continue
            if end == "timeout":
                skipped = ", ".join(describe(h) for h in hooks[index + 1 :]) or "none"
                logger.error(
                    "shutdown hook %s did not finish within the %.1fs left for the shutdown "
                    "hooks (shutdown_timeout=%ss) and was cancelled; shutdown hooks skipped: %s",
                    describe(hook),
                    budget,
                    self.shutdown_timeout,
                    skipped,
                )
                return

    def check(self) -> None:
        """Fail with a RegistrationError if a queue names a connector that was never registered."""
        if not self.routes:
            raise RegistrationError("no queue consumers are registered; use @queue_consumer first")
        for route in self.routes:
            if route.connector_name not in self.connectors:
                known = ", ".join(repr(n) for n in sorted(self.connectors)) or "none"
                raise RegistrationError(
                    f"{route.where()} names connector {route.connector_name!r}, which was never "
                    f"registered (registered connectors: {known}); call connector_register() "
                    "with a config of that connector_name"
                )
        for route in self.routes:
            if isinstance(route.dead_letter, DeadLetterQueue):
                check_target(self, route, route.dead_letter)
        if self.workers > 1:
            used = {route.connector_name for route in self.routes}
            for name in sorted(used):
                connector = self.connectors[name].connector
                if in_process_only(connector):
                    raise RegistrationError(
                        f"App.workers={self.workers}: connector {name!r} "
                        f"({getattr(connector, '__name__', connector)}) is in_process_only, but "
                        "more than one worker puts every connector in worker processes; run it "
                        "with one worker"
                    )

    async def start(self) -> None:
        """Run every registered connector until SIGTERM/SIGINT/SIGHUP, ``stop()`` or cancellation;
        then stop fetching, let in-flight handlers finish within ``shutdown_timeout``, and stop
        and reap every worker process. Raises WorkerCrashedError if a worker keeps crashing."""
        self.check()
        if self.workers < 1:
            raise RomewaysError(f"App.workers={self.workers!r}: give a count >= 1")
        if self._stopping is not None:
            raise RomewaysError("this App is already running; start() it once at a time")
        stopping = self._stopping = asyncio.Event()
        undo_signals = install_stop_signals(stopping)
        used = {route.connector_name for route in self.routes}
        for name in sorted(set(self.connectors) - used):
            logger.warning("connector %r has no queue consumers; not starting it", name)
        active = {n: r for n, r in self.connectors.items() if n in used}
        # With workers > 1 every connector runs in that many supervised processes.
        spawned = [n for n, r in active.items() if r.spawn_process or self.workers > 1]
        in_process = [n for n in active if n not in spawned]
        supervisors = [Supervisor(self, n, slot) for n in spawned for slot in range(self.workers)]
        tasks = [asyncio.create_task(s.run(stopping)) for s in supervisors]
        if in_process:
            tasks.append(asyncio.create_task(serve(self, in_process, stopping)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            stopping.set()
            await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))
            undo_signals()
            self._stopping = None
        for task in tasks:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]  # checked not None just above

    def stop(self) -> None:
        """Ask a running ``start()`` to shut down gracefully (from the loop that runs it)."""
        if self._stopping is not None:
            self._stopping.set()


def _positive_seconds(value: object) -> bool:
    """A finite number of seconds > 0 (not a bool, not NaN)."""
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def is_app(value: object) -> TypeIs[App[Any]]:
    """Whether ``value`` is an App, of whatever state type (``isinstance`` would leave pyright
    an ``App[Unknown]``)."""
    return isinstance(value, App)


def _check_queue_config(registration: ConnectorRegistration, route: Route[Any]) -> None:
    connector: Any = registration.connector
    _, queue_config_type = config_types(connector)
    if not isinstance(route.config, queue_config_type):
        raise RegistrationError(
            f"{route.where()}: its config is a {type(route.config).__name__}, but connector "
            f"{route.connector_name!r} ({connector.__name__}) takes a {queue_config_type.__name__}"
        )
