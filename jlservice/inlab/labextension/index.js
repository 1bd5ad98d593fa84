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

export default [refresh, oomKilled];
