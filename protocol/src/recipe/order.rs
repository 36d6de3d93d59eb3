//! Start order for a set of components, from their dependencies: dependencies first, and why
//! a set cannot start (a duplicate, a cycle, a missing or mismatched dependency).

use std::collections::{BTreeMap, BTreeSet};

use super::error::RecipeError;
use super::types::{DependencyKind, Recipe};

/// Start order for a set of components: dependencies first (topological; ties by name).
///
/// Errors: two components with one name, a cycle (the message lists the components on it,
/// like `a -> b -> a`), a hard dependency missing from the set, a dependency whose version
/// does not satisfy the requirement. Soft dependencies that are missing are fine; present
/// ones order (and are version-checked) like hard ones.
pub fn start_order(components: &[&Recipe]) -> Result<Vec<String>, RecipeError> {
    let mut by_name: BTreeMap<&str, &Recipe> = BTreeMap::new();
    for recipe in components {
        if let Some(previous) = by_name.insert(recipe.name.as_str(), recipe) {
            return Err(RecipeError::DuplicateComponent {
                name: recipe.name.clone(),
                first: previous.version.to_string(),
                second: recipe.version.to_string(),
            });
        }
    }

    let mut needs: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, recipe) in &by_name {
        let mut set = BTreeSet::new();
        for (dep_name, dep) in &recipe.dependencies {
            match by_name.get(dep_name.as_str()) {
                Some(found) => {
                    if !dep.version.matches(&found.version) {
                        return Err(RecipeError::VersionMismatch {
                            component: recipe.name.clone(),
                            component_version: recipe.version.to_string(),
                            dependency: dep_name.clone(),
                            requirement: dep.version.clone(),
                            found: found.version.to_string(),
                        });
                    }
                    set.insert(dep_name.as_str());
                }
                None if dep.kind == DependencyKind::Hard => {
                    return Err(RecipeError::MissingDependency {
                        component: recipe.name.clone(),
                        dependency: dep_name.clone(),
                        requirement: dep.version.clone(),
                    });
                }
                None => {}
            }
        }
        needs.insert(name, set);
    }

    let mut order = Vec::with_capacity(needs.len());
    while let Some(ready) = needs
        .iter()
        .find(|(_, deps)| deps.is_empty())
        .map(|(name, _)| *name)
    {
        needs.remove(ready);
        for deps in needs.values_mut() {
            deps.remove(ready);
        }
        order.push(ready.to_owned());
    }
    if needs.is_empty() {
        return Ok(order);
    }

    // Every remaining component needs another remaining one: walk until a name repeats.
    let mut path: Vec<&str> = Vec::new();
    let mut current = needs.keys().next().copied();
    while let Some(name) = current {
        if let Some(pos) = path.iter().position(|n| *n == name) {
            let mut cycle: Vec<&str> = path.split_off(pos);
            if let Some(min_pos) = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, n)| **n)
                .map(|(i, _)| i)
            {
                cycle.rotate_left(min_pos);
            }
            if let Some(first) = cycle.first().copied() {
                cycle.push(first);
            }
            return Err(RecipeError::Cycle {
                cycle: cycle.join(" -> "),
            });
        }
        path.push(name);
        current = needs.get(name).and_then(|deps| deps.iter().next().copied());
    }
    let mut stuck: Vec<&str> = needs.keys().copied().collect();
    if let Some(first) = stuck.first().copied() {
        stuck.push(first);
    }
    Err(RecipeError::Cycle {
        cycle: stuck.join(" -> "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::test_support::*;
    use crate::recipe::*;
    use serde_json::json;

    fn component(name: &str, version: &str, deps: &[(&str, &str, DependencyKind)]) -> Recipe {
        Recipe {
            name: name.to_owned(),
            version: semver::Version::parse(version).unwrap_or(semver::Version::new(0, 0, 0)),
            description: String::new(),
            configuration: json!({}),
            dependencies: deps
                .iter()
                .map(|(n, req, kind)| {
                    (
                        (*n).to_owned(),
                        Dependency {
                            version: semver::VersionReq::parse(req)
                                .unwrap_or(semver::VersionReq::STAR),
                            kind: *kind,
                        },
                    )
                })
                .collect(),
            manifests: vec![Manifest {
                platform: Platform::default(),
                artifacts: Vec::new(),
                lifecycle: Lifecycle::default(),
            }],
        }
    }

    use DependencyKind::{Hard, Soft};

    #[test]
    fn start_order_chain() -> TestResult {
        let c = component("com.c", "1.0.0", &[("com.b", "*", Hard)]);
        let b = component("com.b", "1.0.0", &[("com.a", "^1", Hard)]);
        let a = component("com.a", "1.4.0", &[]);
        assert_eq!(start_order(&[&c, &b, &a])?, ["com.a", "com.b", "com.c"]);
        assert_eq!(start_order(&[])?, Vec::<String>::new());
        Ok(())
    }

    #[test]
    fn start_order_diamond_is_deterministic() -> TestResult {
        let top = component(
            "com.top",
            "1.0.0",
            &[("com.y", "*", Hard), ("com.x", "*", Soft)],
        );
        let x = component("com.x", "1.0.0", &[("com.base", "*", Hard)]);
        let y = component("com.y", "1.0.0", &[("com.base", "*", Hard)]);
        let base = component("com.base", "1.0.0", &[]);
        let alone = component("com.alone", "1.0.0", &[]);
        let expected = ["com.alone", "com.base", "com.x", "com.y", "com.top"];
        assert_eq!(start_order(&[&top, &x, &y, &base, &alone])?, expected);
        assert_eq!(start_order(&[&alone, &base, &y, &x, &top])?, expected);
        Ok(())
    }

    #[test]
    fn start_order_cycle_error() -> TestResult {
        let a = component("com.a", "1.0.0", &[("com.b", "*", Hard)]);
        let b = component("com.b", "1.0.0", &[("com.c", "*", Soft)]);
        let c = component("com.c", "1.0.0", &[("com.a", "*", Hard)]);
        let d = component("com.d", "1.0.0", &[("com.a", "*", Hard)]);
        let e = start_order(&[&d, &c, &b, &a])
            .err()
            .ok_or("no cycle found")?;
        assert_eq!(
            e.to_string(),
            "dependency cycle: com.a -> com.b -> com.c -> com.a (each component needs the next)"
        );
        let x = component("com.x", "1.0.0", &[("com.y", "*", Hard)]);
        let y = component("com.y", "1.0.0", &[("com.x", "*", Hard)]);
        let e = start_order(&[&y, &x]).err().ok_or("no cycle found")?;
        assert_contains(&e.to_string(), &["com.x -> com.y -> com.x"])
    }

    #[test]
    fn start_order_missing_hard_dependency() -> TestResult {
        let a = component("com.x", "1.0.0", &[("com.y", ">=1.0", Hard)]);
        let e = start_order(&[&a]).err().ok_or("accepted")?;
        assert_eq!(
            e.to_string(),
            "com.x needs com.y (>=1.0), which is not deployed"
        );
        Ok(())
    }

    #[test]
    fn start_order_missing_soft_dependency_is_fine() -> TestResult {
        let a = component("com.x", "1.0.0", &[("com.y", ">=1.0", Soft)]);
        assert_eq!(start_order(&[&a])?, ["com.x"]);
        Ok(())
    }

    #[test]
    fn start_order_version_mismatch() -> TestResult {
        let a = component("com.x", "1.0.0", &[("com.y", ">=1.0.0, <2.0.0", Hard)]);
        let b = component("com.y", "2.1.0", &[]);
        let e = start_order(&[&a, &b]).err().ok_or("accepted")?;
        assert_eq!(
            e.to_string(),
            "com.x 1.0.0 needs com.y (>=1.0.0, <2.0.0), but com.y 2.1.0 is deployed"
        );
        let soft = component("com.x", "1.0.0", &[("com.y", "^1", Soft)]);
        assert!(start_order(&[&soft, &b]).is_err());
        let dup = component("com.y", "2.2.0", &[]);
        let e = start_order(&[&b, &dup]).err().ok_or("accepted")?;
        assert_eq!(e.to_string(), "com.y is listed twice (2.1.0 and 2.2.0)");
        Ok(())
    }
}
