"""Reply to an incoming SMS with TwiML — point a Twilio number's messaging webhook here."""


def handler(context, event, callback):
    twiml = Twilio.twiml.MessagingResponse()
    sender = event.get("From", "there")
    twiml.message(f"Hello {sender}, this is {context.get('GREETING', 'fnd')}!")
    callback(None, twiml)
