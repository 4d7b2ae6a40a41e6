// Drives falsim with the official @fal-ai/client; prints one JSON object for the pytest side.
// Env: FALSIM_URL (base URL), FAL_KEY, WEBHOOK_URL.
import { createFalClient } from "@fal-ai/client";

const base = process.env.FALSIM_URL.replace(/\/$/, "");
const endpoint = "imagineart/imagineart-2.0-preview/text-to-image";

const fal = createFalClient({
  credentials: process.env.FAL_KEY,
  // The client always builds https://queue.fal.run/... URLs; point them at the simulator.
  requestMiddleware: async (request) => ({
    ...request,
    url: request.url.replace("https://queue.fal.run/", `${base}/`),
  }),
});

const submitted = await fal.queue.submit(endpoint, {
  input: { prompt: "a lighthouse from node", seed: 21, resolution: "1K" },
  webhookUrl: process.env.WEBHOOK_URL,
});

let status;
for (let i = 0; i < 500; i += 1) {
  status = await fal.queue.status(endpoint, { requestId: submitted.request_id, logs: true });
  if (status.status === "COMPLETED") break;
  await new Promise((resolve) => setTimeout(resolve, 10));
}
const result = await fal.queue.result(endpoint, { requestId: submitted.request_id });

const updates = [];
const subscribed = await fal.subscribe(endpoint, {
  input: { prompt: "subscribed from node", aspect_ratio: "16:9", resolution: "1K" },
  logs: true,
  pollInterval: 10,
  onQueueUpdate: (update) => updates.push(update.status),
});

console.log(
  JSON.stringify({
    submitted,
    status,
    result: { requestId: result.requestId, data: result.data },
    subscribed: { requestId: subscribed.requestId, data: subscribed.data },
    updates,
  }),
);
