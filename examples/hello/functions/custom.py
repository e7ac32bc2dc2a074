"""A custom response: status, headers, a cookie and a JSON body, like Twilio's Runtime Response."""


def handler(context, event, callback):
    response = Twilio.Response()
    response.setStatusCode(201)
    response.appendHeader("Content-Type", "application/json")
    response.appendHeader("Access-Control-Allow-Origin", "*")
    response.setCookie("visited", "yes", ["Max-Age=3600"])
    response.setBody({"created": True, "domain": context.DOMAIN_NAME})
    callback(None, response)
