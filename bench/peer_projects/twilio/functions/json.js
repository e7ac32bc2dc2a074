exports.handler = (context, event, callback) =>
  callback(null, { message: "hello world", name: event.name || "world", items: [1, 2, 3], ok: true });
