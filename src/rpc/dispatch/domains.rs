//! Domain lookups and lists, define and undefine, start, stop and the rest of the lifecycle.

use super::*;

pub(super) async fn call(c: &Arc<Client>, proc_: i32, args: &[u8]) -> VirResult<Vec<u8>> {
    let d = &c.driver;
    match proc_ {
        // ---------------------------------------------------------------- lookups, lists
        p::DOMAIN_LOOKUP_BY_NAME => {
            let a: Str = dec(args)?;
            ret(Dom {
                dom: wire(&d.lookup_name(&a.s)?.dom_ref()),
            })
        }
        p::DOMAIN_LOOKUP_BY_UUID => {
            let a: LookupByUuidArgs = dec(args)?;
            ret(Dom {
                dom: wire(&d.lookup_uuid(&Uuid::from_bytes(a.uuid))?.dom_ref()),
            })
        }
        p::DOMAIN_LOOKUP_BY_ID => {
            let a: Int = dec(args)?;
            ret(Dom {
                dom: wire(&d.lookup_id(a.v)?.dom_ref()),
            })
        }
        p::CONNECT_LIST_ALL_DOMAINS => {
            let a: ListAllDomainsArgs = dec(args)?;
            let mut list = d.list_all(a.flags)?;
            if list.len() > 16384 {
                return Err(VirError::rpc(&format!(
                    "too many domains '{}' for limit '16384'",
                    list.len()
                )));
            }
            let n = list.len() as u32;
            if a.need_results == 0 {
                list.clear();
            }
            ret(ListAllDomainsRet {
                domains: list
                    .into_iter()
                    .map(|r| Domain {
                        name: r.name,
                        uuid: *r.uuid.as_bytes(),
                        id: r.id,
                    })
                    .collect(),
                ret: n,
            })
        }
        p::CONNECT_NUM_OF_DOMAINS => ret(Int {
            v: d.active_ids().len() as i32,
        }),
        p::CONNECT_LIST_DOMAINS => {
            let a: Int = dec(args)?;
            if a.v < 0 || a.v > 16384 {
                return Err(VirError::rpc("maxids > REMOTE_DOMAIN_LIST_MAX"));
            }
            let mut ids = d.active_ids();
            ids.truncate(a.v as usize);
            ret(ListIdsRet { ids })
        }
        p::CONNECT_NUM_OF_DEFINED_DOMAINS => ret(Int {
            v: d.inactive_names().len() as i32,
        }),
        p::CONNECT_LIST_DEFINED_DOMAINS => {
            let a: Int = dec(args)?;
            if a.v < 0 || a.v > 16384 {
                return Err(VirError::rpc("maxnames > REMOTE_DOMAIN_LIST_MAX"));
            }
            let mut names = d.inactive_names();
            names.truncate(a.v as usize);
            ret(ListNamesRet { names })
        }

        // ---------------------------------------------------------------- define / start / stop
        p::DOMAIN_DEFINE_XML | p::DOMAIN_DEFINE_XML_FLAGS => {
            let a = if proc_ == p::DOMAIN_DEFINE_XML_FLAGS {
                dec(args)?
            } else {
                let a: Str = dec(args)?;
                XmlFlags { xml: a.s, flags: 0 }
            };
            ret(Dom {
                dom: wire(&d.define_xml(&a.xml, a.flags).await?),
            })
        }
        p::DOMAIN_CREATE_XML => {
            let a: XmlFlags = dec(args)?;
            let r = d.create_xml(&a.xml, a.flags).await?;
            remember_autodestroy(c, a.flags, &r);
            ret(Dom { dom: wire(&r) })
        }
        p::DOMAIN_CREATE | p::DOMAIN_CREATE_WITH_FLAGS => {
            let with_flags = proc_ == p::DOMAIN_CREATE_WITH_FLAGS;
            let a = dom_flags(args, with_flags, 0)?;
            let r = d.create(&dom(c, &a.dom)?, a.flags).await?;
            remember_autodestroy(c, a.flags, &r);
            // The old call returns nothing; its successor the started domain.
            if with_flags {
                ret(Dom { dom: wire(&r) })
            } else {
                void()
            }
        }
        p::DOMAIN_DESTROY | p::DOMAIN_DESTROY_FLAGS => {
            let a = dom_flags(args, proc_ == p::DOMAIN_DESTROY_FLAGS, 0)?;
            d.destroy(&dom(c, &a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_SHUTDOWN | p::DOMAIN_SHUTDOWN_FLAGS => {
            let a = dom_flags(args, proc_ == p::DOMAIN_SHUTDOWN_FLAGS, 0)?;
            d.shutdown(&dom(c, &a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_REBOOT => {
            let a: DomFlags = dec(args)?;
            d.reboot(&dom(c, &a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_RESET => {
            let a: DomFlags = dec(args)?;
            d.reset(&dom(c, &a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_RESUME => {
            let a: Dom = dec(args)?;
            d.resume(&dom(c, &a.dom)?).await?;
            void()
        }
        p::DOMAIN_UNDEFINE | p::DOMAIN_UNDEFINE_FLAGS => {
            let a = dom_flags(args, proc_ == p::DOMAIN_UNDEFINE_FLAGS, 0)?;
            d.undefine(&dom(c, &a.dom)?, a.flags).await?;
            void()
        }
        p::DOMAIN_SUSPEND => {
            let a: Dom = dec(args)?;
            d.suspend(&dom(c, &a.dom)?)?;
            void()
        }
        p::DOMAIN_SAVE => {
            let a: DomainSaveArgs = dec(args)?;
            dom(c, &a.dom)?;
            Err(unsupported_op("saving the memory state"))
        }
        p::DOMAIN_SAVE_FLAGS => {
            let a: DomainSaveFlagsArgs = dec(args)?;
            dom(c, &a.dom)?;
            Err(unsupported_op("saving the memory state"))
        }
        p::DOMAIN_MANAGED_SAVE => {
            let a: DomFlags = dec(args)?;
            dom(c, &a.dom)?;
            Err(unsupported_op("managed save of the memory state"))
        }
        p::DOMAIN_SNAPSHOT_CREATE_XML => {
            let a: DomainSnapshotCreateXmlArgs = dec(args)?;
            dom(c, &a.dom)?;
            Err(unsupported_op("a snapshot"))
        }
        p::DOMAIN_MANAGED_SAVE_REMOVE => {
            let a: DomFlags = dec(args)?;
            dom(c, &a.dom)?;
            VirError::check_flags(a.flags, 0, "virDomainManagedSaveRemove")?;
            void()
        }
        _ => Err(unhandled(proc_)),
    }
}
