//! Secrets: define, values, lookups, lists.

use super::*;

pub(super) async fn call(c: &Arc<Client>, proc_: i32, args: &[u8]) -> VirResult<Vec<u8>> {
    let d = &c.driver;
    match proc_ {
        // ---------------------------------------------------------------- secrets
        p::SECRET_DEFINE_XML => {
            let a: XmlFlags = dec(args)?;
            ret(secret_wire(&d.secrets.define(&a.xml, a.flags).await?))
        }
        p::SECRET_LOOKUP_BY_UUID => {
            let a: LookupByUuidArgs = dec(args)?;
            ret(secret_wire(
                &d.secrets.lookup_uuid(&Uuid::from_bytes(a.uuid))?,
            ))
        }
        p::SECRET_LOOKUP_BY_USAGE => {
            let a: SecretLookupByUsageArgs = dec(args)?;
            ret(secret_wire(
                &d.secrets.lookup_usage(a.usage_type, &a.usage_id)?,
            ))
        }
        p::SECRET_GET_XML_DESC => {
            let a: SecretFlags = dec(args)?;
            ret(Str {
                s: d.secrets
                    .xml_desc(&Uuid::from_bytes(a.secret.uuid), a.flags)?,
            })
        }
        p::SECRET_SET_VALUE => {
            let a: SecretSetValueArgs = dec(args)?;
            d.secrets
                .set_value(&Uuid::from_bytes(a.secret.uuid), a.value.0, a.flags)
                .await?;
            void()
        }
        p::SECRET_GET_VALUE => {
            let a: SecretFlags = dec(args)?;
            let v = d
                .secrets
                .get_value(&Uuid::from_bytes(a.secret.uuid), a.flags)?;
            ret(SecretGetValueRet {
                value: Opaque(v.expose().to_vec()),
            })
        }
        p::SECRET_UNDEFINE => {
            let a: SecretArg = dec(args)?;
            d.secrets.undefine(&Uuid::from_bytes(a.secret.uuid)).await?;
            void()
        }
        p::CONNECT_NUM_OF_SECRETS => ret(Int {
            v: d.secrets.count() as i32,
        }),
        p::CONNECT_LIST_SECRETS => {
            let a: Int = dec(args)?;
            if a.v < 0 {
                return Err(VirError::api_arg(
                    "maxuuids in virConnectListSecrets must be greater than or equal to 0",
                ));
            }
            let names = d
                .secrets
                .list_all(0)?
                .into_iter()
                .take(a.v as usize)
                .map(|s| s.uuid.hyphenated().to_string())
                .collect();
            ret(ListNamesRet { names })
        }
        p::CONNECT_LIST_ALL_SECRETS => {
            let a: ListAllSecretsArgs = dec(args)?;
            let all = d.secrets.list_all(a.flags)?;
            let n = all.len() as u32;
            let secrets = if a.need_results != 0 {
                all.iter().map(secret_wire).collect()
            } else {
                Vec::new()
            };
            ret(ListAllSecretsRet { secrets, ret: n })
        }
        p::DOMAIN_GET_SECURITY_LABEL => {
            let a: Dom = dec(args)?;
            dom(c, &a.dom)?;
            ret(DomainGetSecurityLabelRet {
                label: CharArray(String::new()),
                enforcing: 0,
            })
        }
        p::DOMAIN_GET_METADATA => {
            let a: DomainGetMetadataArgs = dec(args)?;
            VirError::check_flags(a.flags, 3, "virDomainGetMetadata")?;
            let o = dom(c, &a.dom)?;
            let def = d.def_for(&o, a.flags)?.tree()?;
            let v = match (a.type_, a.uri) {
                (0 | 1, Some(_)) => {
                    return Err(VirError::api_arg(
                        "uri in virDomainGetMetadata must be NULL",
                    ))
                }
                (0, None) => def.description(),
                (1, None) => def.title(),
                (2, Some(uri)) => def.metadata_element(&uri),
                (2, None) => {
                    return Err(VirError::api_arg(
                        "uri in virDomainGetMetadata must not be NULL",
                    ))
                }
                (t, _) => return Err(VirError::unknown_metadata_type(t)),
            };
            text(v.ok_or_else(VirError::no_metadata)?)
        }
        p::DOMAIN_SET_METADATA => {
            let a: DomainSetMetadataArgs = dec(args)?;
            let o = dom(c, &a.dom)?;
            d.set_metadata(
                &o,
                a.type_,
                a.metadata.as_deref(),
                a.key.as_deref(),
                a.uri.as_deref(),
                a.flags,
            )
            .await?;
            void()
        }
        _ => Err(unhandled(proc_)),
    }
}
