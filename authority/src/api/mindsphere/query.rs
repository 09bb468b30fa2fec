//! Agent lists: `GET /agents?page=&size=&sort=&filter=`, recognised into an [`AgentQuery`]
//! (Spring paging, MindSphere's JSON filter) before the list index answers it.

use latchkey_core::json::StrictValue;

use super::{Agent, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PagedAgent, SortOrder};
use crate::api::Form;
use crate::error::ApiError;
use crate::store::{AgentRecord, BoardingState};

/// An agent property one can sort or filter by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentField {
    Id,
    EntityId,
    Name,
    SecurityProfile,
    ETag,
}

impl AgentField {
    fn parse(s: &str) -> Result<AgentField, ApiError> {
        Ok(match s {
            "id" => AgentField::Id,
            "entityId" => AgentField::EntityId,
            "name" => AgentField::Name,
            "securityProfile" => AgentField::SecurityProfile,
            "eTag" => AgentField::ETag,
            _ => {
                return Err(ApiError::InvalidRequest(
                    "agents can be sorted and filtered by id, entityId, name, securityProfile \
                     and eTag"
                        .into(),
                ));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            AgentField::Id => "id",
            AgentField::EntityId => "entityId",
            AgentField::Name => "name",
            AgentField::SecurityProfile => "securityProfile",
            AgentField::ETag => "eTag",
        }
    }

    fn text(self, a: &AgentRecord) -> std::borrow::Cow<'_, str> {
        match self {
            AgentField::Id | AgentField::EntityId => a.id.as_str().into(),
            AgentField::Name => a.name.as_str().into(),
            AgentField::SecurityProfile => a.security_profile.as_str().into(),
            AgentField::ETag => a.etag.to_string().into(),
        }
    }
}

/// How a filter condition compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    Eq,
    Contains,
    StartsWith,
    EndsWith,
}

/// One filter condition; a filter is the conjunction of its conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub field: AgentField,
    pub compare: Compare,
    pub value: String,
}

impl Condition {
    pub fn matches(&self, a: &AgentRecord) -> bool {
        let text = self.field.text(a);
        let v = self.value.as_str();
        match self.compare {
            Compare::Eq => text == v,
            Compare::Contains => text.contains(v),
            Compare::StartsWith => text.starts_with(v),
            Compare::EndsWith => text.ends_with(v),
        }
    }
}

/// A recognised list request. `filter` is MindSphere's JSON filter: an object of field →
/// value (equality) or field → `{"eq"|"contains"|"startsWith"|"endsWith": value}`, all of
/// which must hold; `sort` is Spring's `property[,asc|desc]`. Two more filter fields take
/// equality only: `boardingStatus` (`NOT_ONBOARDED`, `ONBOARDING`, `ONBOARDED`) and
/// `onlineStatus` (`ONLINE`, `OFFLINE`, as `GET /agents/{id}/status` answers). `after` is a
/// cursor from a previous page's `Latchkey-Next-Cursor` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentQuery {
    pub page: u32,
    pub size: u32,
    pub sort: AgentField,
    pub descending: bool,
    pub filter: Vec<Condition>,
    pub boarding: Option<BoardingState>,
    pub online: Option<bool>,
    pub after: Option<String>,
}

/// Longest list cursor accepted.
pub const MAX_CURSOR: usize = 2048;

/// Most conditions in one filter.
const MAX_CONDITIONS: usize = 8;

impl AgentQuery {
    pub fn parse(form: &Form<'_>) -> Result<AgentQuery, ApiError> {
        let number = |name: &str, default: u32| -> Result<u32, ApiError> {
            form.get(name).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| ApiError::InvalidRequest(format!("{name} must be a number")))
            })
        };
        let page = number("page", 0)?;
        let size = number("size", DEFAULT_PAGE_SIZE)?;
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            return Err(ApiError::InvalidRequest(format!(
                "size must be between 1 and {MAX_PAGE_SIZE}"
            )));
        }
        let (sort, descending) = match form.get("sort") {
            None => (AgentField::Id, false),
            Some(s) => {
                let (field, dir) = s.split_once(',').unwrap_or((s, "asc"));
                let descending = match dir.trim().to_ascii_lowercase().as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => {
                        return Err(ApiError::InvalidRequest(
                            "sort direction must be asc or desc".into(),
                        ));
                    }
                };
                (AgentField::parse(field.trim())?, descending)
            }
        };
        let (filter, boarding, online) = match form.get("filter") {
            None => (Vec::new(), None, None),
            Some(f) => parse_filter(f)?,
        };
        let after = form.get("after").map(str::to_owned);
        if after.as_ref().is_some_and(|a| a.len() > MAX_CURSOR) {
            return Err(ApiError::InvalidRequest(format!(
                "after must be at most {MAX_CURSOR} bytes"
            )));
        }
        Ok(AgentQuery {
            page,
            size,
            sort,
            descending,
            filter,
            boarding,
            online,
            after,
        })
    }

    /// The Spring page of `content`, out of `total` matching agents; `last` when nothing
    /// follows it.
    pub fn answer(&self, content: Vec<Agent>, total: u64, last: bool) -> PagedAgent {
        let size = u64::from(self.size);
        PagedAgent {
            number_of_elements: content.len() as u64,
            content,
            last,
            total_pages: total.div_ceil(size),
            total_elements: total,
            first: self.page == 0 && self.after.is_none(),
            sort: vec![SortOrder {
                direction: if self.descending { "DESC" } else { "ASC" },
                property: self.sort.as_str(),
                ignore_case: false,
                null_handling: "NATIVE",
                ascending: !self.descending,
                descending: self.descending,
            }],
            size: self.size,
            number: self.page,
        }
    }

    /// Filters, sorts and cuts one page out of all of a tenant's agents: the naive model the
    /// indexed list is tested against (`online` says whether an agent is online).
    pub fn page(
        &self,
        mut agents: Vec<AgentRecord>,
        online: impl Fn(&AgentRecord) -> bool,
    ) -> PagedAgent {
        agents.retain(|a| {
            self.filter.iter().all(|c| c.matches(a))
                && self.boarding.is_none_or(|s| a.state == s)
                && self.online.is_none_or(|o| online(a) == o)
        });
        agents.sort_by(|a, b| {
            let ord = match self.sort {
                AgentField::ETag => a.etag.cmp(&b.etag),
                f => f.text(a).cmp(&f.text(b)),
            }
            .then_with(|| a.id.cmp(&b.id));
            if self.descending { ord.reverse() } else { ord }
        });
        let total = agents.len() as u64;
        let start = u64::from(self.page).saturating_mul(u64::from(self.size));
        let content: Vec<Agent> = agents
            .iter()
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
            .take(self.size as usize)
            .map(Agent::from)
            .collect();
        let last = start.saturating_add(u64::from(self.size)) >= total;
        self.answer(content, total, last)
    }
}

/// What a filter says: conditions on agent fields, a boarding status, an online status.
type Filter = (Vec<Condition>, Option<BoardingState>, Option<bool>);

fn parse_filter(text: &str) -> Result<Filter, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(
            "filter must be a JSON object of field: value or field: {\"eq\"|\"contains\"|\
             \"startsWith\"|\"endsWith\": value}"
                .into(),
        )
    };
    let value: StrictValue = serde_json::from_str(text).map_err(|_| bad())?;
    let serde_json::Value::Object(map) = value.0 else {
        return Err(bad());
    };
    if map.len() > MAX_CONDITIONS {
        return Err(ApiError::InvalidRequest(format!(
            "at most {MAX_CONDITIONS} filter conditions"
        )));
    }
    let (mut boarding, mut online) = (None, None);
    let mut conditions = Vec::new();
    for (field, v) in map {
        let eq = || match &v {
            serde_json::Value::String(s) => Some(s.as_str()),
            serde_json::Value::Object(op) if op.len() == 1 => match op.get("eq") {
                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                _ => None,
            },
            _ => None,
        };
        match field.as_str() {
            "boardingStatus" => {
                boarding = Some(match eq() {
                    Some("NOT_ONBOARDED") => BoardingState::NotOnboarded,
                    Some("ONBOARDING") => BoardingState::Onboarding,
                    Some("ONBOARDED") => BoardingState::Onboarded,
                    _ => {
                        return Err(ApiError::InvalidRequest(
                            "boardingStatus filter must equal NOT_ONBOARDED, ONBOARDING or \
                             ONBOARDED"
                                .into(),
                        ));
                    }
                });
                continue;
            }
            "onlineStatus" => {
                online = Some(match eq() {
                    Some("ONLINE") => true,
                    Some("OFFLINE") => false,
                    _ => {
                        return Err(ApiError::InvalidRequest(
                            "onlineStatus filter must equal ONLINE or OFFLINE".into(),
                        ));
                    }
                });
                continue;
            }
            _ => {}
        }
        conditions.push(condition(field, v)?);
    }
    Ok((conditions, boarding, online))
}

fn condition(field: String, v: serde_json::Value) -> Result<Condition, ApiError> {
    let bad = || {
        ApiError::InvalidRequest(
            "filter must be a JSON object of field: value or field: {\"eq\"|\"contains\"|\
             \"startsWith\"|\"endsWith\": value}"
                .into(),
        )
    };
    {
        {
            let field = AgentField::parse(&field)?;
            let (compare, value) = match v {
                serde_json::Value::String(s) => (Compare::Eq, s),
                serde_json::Value::Object(op) if op.len() == 1 => {
                    let Some((name, serde_json::Value::String(s))) = op.into_iter().next() else {
                        return Err(bad());
                    };
                    let compare = match name.as_str() {
                        "eq" => Compare::Eq,
                        "contains" => Compare::Contains,
                        "startsWith" => Compare::StartsWith,
                        "endsWith" => Compare::EndsWith,
                        _ => return Err(bad()),
                    };
                    (compare, s)
                }
                _ => return Err(bad()),
            };
            Ok(Condition {
                field,
                compare,
                value,
            })
        }
    }
}
