//! Devices: attach, detach and update, block and interface calls.

use super::*;
use crate::driver::TuneParam;

/// `REMOTE_DOMAIN_BLOCK_IO_TUNE_PARAMETERS_MAX`.
const IOTUNE_PARAMS_MAX: usize = 32;

pub(super) async fn call(c: &Arc<Client>, proc_: i32, args: &[u8]) -> VirResult<Vec<u8>> {
    let d = &c.driver;
    match proc_ {
        // ---------------------------------------------------------------- devices
        // libvirt's calls without flags mean "the running domain" (VIR_DOMAIN_AFFECT_LIVE).
        p::DOMAIN_ATTACH_DEVICE | p::DOMAIN_ATTACH_DEVICE_FLAGS => {
            let a = dom_xml_flags(args, proc_ == p::DOMAIN_ATTACH_DEVICE_FLAGS, 1)?;
            d.attach_device(&dom(c, &a.dom)?, &a.xml, a.flags).await?;
            void()
        }
        p::DOMAIN_DETACH_DEVICE | p::DOMAIN_DETACH_DEVICE_FLAGS => {
            let a = dom_xml_flags(args, proc_ == p::DOMAIN_DETACH_DEVICE_FLAGS, 1)?;
            d.detach_device(&dom(c, &a.dom)?, &a.xml, a.flags).await?;
            void()
        }
        p::DOMAIN_DETACH_DEVICE_ALIAS => {
            let a: DomainDetachDeviceAliasArgs = dec(args)?;
            d.detach_alias(&dom(c, &a.dom)?, &a.alias, a.flags).await?;
            void()
        }
        p::DOMAIN_UPDATE_DEVICE_FLAGS => {
            let a: DomXmlFlags = dec(args)?;
            d.update_device(&dom(c, &a.dom)?, &a.xml, a.flags).await?;
            void()
        }
        p::DOMAIN_BLOCK_RESIZE => {
            let a: DomainBlockResizeArgs = dec(args)?;
            d.block_resize(&dom(c, &a.dom)?, &a.disk, a.size, a.flags)
                .await?;
            void()
        }
        p::DOMAIN_GET_BLOCK_INFO => {
            let a: DomainGetBlockInfoArgs = dec(args)?;
            let i = d.block_info(&dom(c, &a.dom)?, &a.path, a.flags).await?;
            ret(DomainGetBlockInfoRet {
                allocation: i.allocation,
                capacity: i.capacity,
                physical: i.physical,
            })
        }
        p::DOMAIN_BLOCK_STATS => {
            let a: DomainBlockStatsArgs = dec(args)?;
            let s = d.block_stats(&dom(c, &a.dom)?, &a.path).await?;
            ret(DomainBlockStatsRet {
                rd_req: s.rd_req,
                rd_bytes: s.rd_bytes,
                wr_req: s.wr_req,
                wr_bytes: s.wr_bytes,
                // libvirt's QEMU driver has no error count either.
                errs: -1,
            })
        }
        p::DOMAIN_BLOCK_STATS_FLAGS => {
            let a: DomainBlockStatsFlagsArgs = dec(args)?;
            // VIR_TYPED_PARAM_STRING_OKAY is the only flag.
            VirError::check_flags(a.flags, 4, "virDomainBlockStatsFlags")?;
            if a.nparams < 0 {
                return Err(VirError::api_arg(
                    "nparams in virDomainBlockStatsFlags must be greater than or equal to 0",
                ));
            }
            let s = d.block_stats(&dom(c, &a.dom)?, &a.path).await?;
            // libvirt's QEMU driver's fields, in its order (no "errs").
            let all = [
                ("wr_bytes", s.wr_bytes),
                ("wr_operations", s.wr_req),
                ("rd_bytes", s.rd_bytes),
                ("rd_operations", s.rd_req),
                ("flush_operations", s.flush_req),
                ("wr_total_times", s.wr_total_ns),
                ("rd_total_times", s.rd_total_ns),
                ("flush_total_times", s.flush_total_ns),
            ];
            let n = all.len() as i32;
            let params = all
                .into_iter()
                .take(a.nparams as usize)
                .map(|(f, v)| TypedParam {
                    field: f.to_string(),
                    value: TypedValue::LLong(v),
                })
                .collect();
            ret(TypedParamsRet {
                params,
                nparams: if a.nparams == 0 { n } else { n.min(a.nparams) },
            })
        }
        p::DOMAIN_INTERFACE_STATS => {
            let a: DomainInterfaceStatsArgs = dec(args)?;
            let s = d.interface_stats(&dom(c, &a.dom)?, &a.device).await?;
            ret(DomainInterfaceStatsRet {
                rx_bytes: s.rx_bytes,
                rx_packets: s.rx_packets,
                rx_errs: s.rx_errs,
                rx_drop: s.rx_drop,
                tx_bytes: s.tx_bytes,
                tx_packets: s.tx_packets,
                tx_errs: s.tx_errs,
                tx_drop: s.tx_drop,
            })
        }
        // ---------------------------------------------------------------- I/O limits
        p::DOMAIN_SET_BLOCK_IO_TUNE => {
            let a: DomainSetBlockIoTuneArgs = dec(args)?;
            if a.params.len() > IOTUNE_PARAMS_MAX {
                return Err(VirError::rpc_internal("nparams too large"));
            }
            let params = a
                .params
                .into_iter()
                .map(|p| match (p.field.as_str(), p.value) {
                    ("group_name", TypedValue::String(g)) => Ok(TuneParam::Group(g)),
                    ("group_name", _) => Err(VirError::invalid_arg(
                        "invalid type for parameter 'group_name', expected 'string'",
                    )),
                    (_, TypedValue::ULLong(v)) => Ok(TuneParam::Field(p.field, v)),
                    (f, _) => Err(VirError::invalid_arg(&format!(
                        "invalid type for parameter '{f}', expected 'ullong'"
                    ))),
                })
                .collect::<VirResult<Vec<_>>>()?;
            d.set_block_io_tune(&dom(c, &a.dom)?, &a.disk, &params, a.flags)
                .await?;
            void()
        }
        p::DOMAIN_GET_BLOCK_IO_TUNE => {
            let a: DomainGetBlockIoTuneArgs = dec(args)?;
            if a.nparams < 0 || a.nparams as usize > IOTUNE_PARAMS_MAX {
                return Err(VirError::rpc_internal("nparams too large"));
            }
            let (params, n) =
                d.get_block_io_tune(&dom(c, &a.dom)?, a.disk.as_deref(), a.nparams, a.flags)?;
            ret(TypedParamsRet {
                params: typed_params(params),
                nparams: n,
            })
        }
        _ => Err(unhandled(proc_)),
    }
}
