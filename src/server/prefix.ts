/** Where InvokeAI serves its download queue router: a module of its own, so the CLI's help names it without loading the routes. */
export const API_PREFIX = "/api/v1/download_queue";
