exports.handler = (context, event, callback) => callback(null, "hello world");
