import { Notification } from "@jupyterlab/apputils";

// The launcher shows a new environment's kernels (and drops a removed one's) within seconds:
// jlservice's kernelspec manager emits this event when the environments' kernels change,
// and JupyterLab would otherwise ask for the kernelspecs again only on its 61 s poll.
const CHANGED = "https://jlservice.invalid/events/kernelspecs/v1";
// jlservice posts this one when the OOM killer ended a process of a kernel
// (jlservice/kernels/labnotice.py; the schema is inlab/notices.py's).
const OOM_KILLED = "https://jlservice.invalid/events/oom-killed/v1";

const refresh = {
  id: "jlservice:kernelspecs-refresh",
  description: "Refreshes the kernelspecs when jlservice says the environments' kernels changed.",
  autoStart: true,
  activate(app) {
    const { events, kernelspecs } = app.serviceManager;
    events.stream.connect((_, event) => {
      if (event.schema_id === CHANGED) {
        kernelspecs.refreshSpecs().catch((error) => console.warn("jlservice:", error));
      }
    });
  },
};

const oomKilled = {
  id: "jlservice:oom-killed",
  description: "Shows a notification when jlservice says the OOM killer hit a notebook's kernel.",
  autoStart: true,
  activate(app) {
    const shown = new Map(); // kernel id → the notification that tells of its last kill
    app.serviceManager.events.stream.connect((_, event) => {
      if (event.schema_id !== OOM_KILLED || typeof event.message !== "string") {
        return;
      }
      // A string, shown as text (JupyterLab renders it through React): no markup gets in.
      const message = event.message;
      const id = shown.get(event.kernel_id);
      if (id === undefined || !Notification.update({ id, message, type: "error" })) {
        shown.set(event.kernel_id, Notification.error(message, { autoClose: false }));
      }
    });
  },
};

// A tab's kernel connection that reconnects (JupyterLab came back and adopted the kernel) sends
// what it queued while its socket was down at once. On "connected", JupyterLab's KernelConnection
// asks for kernel info and sends its queue on the reply, or after kernelInfoTimeout (3 s); but
// with the kernel session unchanged its kernel_info_request joins that queue, behind a cell run
// in the gap, so no reply can come before the timeout. Sending the queue now sends what the
// timeout would, in the same order; jupyter_server passes no message on before the kernel's
// iopub is subscribed (its websocket open awaits the nudge), so no output is lost either.
// It relies on KernelConnection's private queue: where that is not as expected, it does nothing.
const sendQueued = {
  id: "jlservice:reconnect-sends-queued",
  description: "Sends a reconnected kernel connection's queued messages without the kernel info timeout.",
  autoStart: true,
  activate(app) {
    const kernels = app.serviceManager.kernels;
    const connectTo = kernels.connectTo;
    if (typeof connectTo !== "function") {
      return;
    }
    // Every connection the kernel and session managers make comes through here.
    kernels.connectTo = function (...args) {
      const connection = connectTo.apply(this, args);
      connection?.connectionStatusChanged?.connect(sendIfStuck);
      return connection;
    };
  },
};

function sendIfStuck(connection, status) {
  const queue = connection._pendingMessages;
  if (
    status === "connected" &&
    connection._isRestarting === false &&
    typeof connection._sendPending === "function" &&
    Array.isArray(queue) &&
    queue.some((msg) => msg?.header?.msg_type === "kernel_info_request")
  ) {
    try {
      connection._sendPending(); // in order; each leaves the queue only once sent
    } catch (error) {
      console.warn("jlservice:", error);
    }
  }
}

export default [refresh, oomKilled, sendQueued];
