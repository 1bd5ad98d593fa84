// The launcher shows a new environment's kernels (and drops a removed one's) within seconds:
// jlservice's kernelspec manager emits this event when the environments' kernels change,
// and JupyterLab would otherwise ask for the kernelspecs again only on its 61 s poll.
const CHANGED = "https://jlservice.invalid/events/kernelspecs/v1";

export default {
  id: "jlservice-kernelspecs:refresh",
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
