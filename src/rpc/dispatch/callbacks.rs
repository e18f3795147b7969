//! Event registration (callback and legacy).

use super::*;

pub(super) async fn call(c: &Arc<Client>, proc_: i32, args: &[u8]) -> VirResult<Vec<u8>> {
    match proc_ {
        // ---------------------------------------------------------------- events
        p::CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY => {
            let a: EventCallbackRegisterAnyArgs = dec(args)?;
            if !(0..events::id::LAST).contains(&a.event_id) {
                return Err(VirError::rpc_internal(&format!(
                    "unsupported event ID {}",
                    a.event_id
                )));
            }
            let filter = match a.dom {
                Some(w) => Some(dom(c, &w)?.uuid),
                None => None,
            };
            let id = c.with(|s| {
                let id = s.next_callback;
                s.next_callback += 1;
                s.callbacks.insert(
                    id,
                    Callback {
                        event_id: a.event_id,
                        dom: filter,
                        legacy: false,
                    },
                );
                id
            });
            c.ensure_event_forwarding();
            ret(EventCallbackRegisterAnyRet { callback_id: id })
        }
        p::CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY => {
            let a: EventCallbackDeregisterAnyArgs = dec(args)?;
            c.with(|s| s.callbacks.remove(&a.callback_id))
                .ok_or_else(|| {
                    VirError::rpc_internal(&format!(
                        "domain event callback {} not registered",
                        a.callback_id
                    ))
                })?;
            void()
        }
        p::CONNECT_DOMAIN_EVENT_REGISTER_ANY => {
            let a: EventRegisterAnyArgs = dec(args)?;
            // libvirtd accepts ids 0..15 on the legacy procedure; metalvirt delivers lifecycle,
            // reboot and device-removed events through it.
            if !(0..16).contains(&a.event_id) {
                return Err(VirError::rpc_internal(&format!(
                    "unsupported event ID {}",
                    a.event_id
                )));
            }
            c.with(|s| {
                if s.callbacks.values().any(|cb| cb.event_id == a.event_id) {
                    return Err(VirError::invalid_arg("event callback already tracked")
                        .in_domain(from::NONE));
                }
                let id = s.next_callback;
                s.next_callback += 1;
                s.callbacks.insert(
                    id,
                    Callback {
                        event_id: a.event_id,
                        dom: None,
                        legacy: true,
                    },
                );
                Ok(())
            })?;
            c.ensure_event_forwarding();
            void()
        }
        p::CONNECT_DOMAIN_EVENT_DEREGISTER_ANY => {
            let a: EventRegisterAnyArgs = dec(args)?;
            c.with(|s| {
                let id = s
                    .callbacks
                    .iter()
                    .find(|(_, cb)| cb.legacy && cb.event_id == a.event_id)
                    .map(|(id, _)| *id);
                match id {
                    Some(id) => {
                        s.callbacks.remove(&id);
                        Ok(())
                    }
                    None => Err(VirError::rpc_internal(&format!(
                        "domain event {} not registered",
                        a.event_id
                    ))),
                }
            })?;
            void()
        }
        _ => Err(unhandled(proc_)),
    }
}
