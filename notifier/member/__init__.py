"""The member's front door: short-lived member tokens, the `/member/v1` API with its event stream,
and the `/v1/accounts/{external_id}/inbox-token` route that issues tokens. Wired by
`notifier.app.create_app` through `notifier.member.api.setup`."""
